//! The checkpoint of a finetune job's training stage: the trained head (and blocks), saved under
//! the job's artifacts folder with a digest of the item set and params it was trained with, so a
//! job resumed after a restart skips training when it had finished it on the same items. It is
//! pushed to the object store too, for another worker resuming the job.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::db::items::ItemRecord;
use crate::generation::store::{HEAD_FILE, TAIL_FILE};
use crate::network::lite0::TailWeights;
use crate::network::tail::{load_tail, save_tail};
use crate::storage::Objects;
use crate::train::params::FinetuneParams;
use crate::train::{EmbeddingHead, TrainedHead};

/// What training made: the head, and the trained blocks when blocks were trained.
pub struct Trained {
    pub head: TrainedHead,
    pub tail: Option<TailWeights>,
}

/// The trained head of an interrupted job, valid for the same items.
pub struct Checkpoint {
    objects: Objects,
    dir: PathBuf,
    key: String,
}

#[derive(Serialize, Deserialize)]
struct CheckpointMeta {
    key: String,
    steps: usize,
    final_loss: f32,
    losses: Vec<f32>,
}

impl Checkpoint {
    pub fn new(objects: &Objects, artifacts: &Path, records: &[ItemRecord], params: &FinetuneParams) -> Self {
        let mut hasher = Sha256::new();
        for record in records {
            hasher.update(record.seq.to_le_bytes());
        }
        hasher.update(serde_json::to_vec(params).unwrap_or_default());
        Self { objects: objects.clone(), dir: artifacts.join("checkpoint"), key: hex::encode(hasher.finalize()) }
    }

    /// The checkpoint saved here or, on S3, by the worker that ran the job before.
    pub fn load(&self) -> Option<Trained> {
        if let Err(err) = self.objects.pull_dir(&self.dir) {
            tracing::warn!(error = %format!("{err:#}"), "could not fetch the training checkpoint");
        }
        let meta: CheckpointMeta = serde_json::from_slice(&std::fs::read(self.dir.join("meta.json")).ok()?).ok()?;
        if meta.key != self.key {
            return None;
        }
        let head = EmbeddingHead::load(self.dir.join(HEAD_FILE), &candle_core::Device::Cpu).ok()?;
        let tail_path = self.dir.join(TAIL_FILE);
        let tail = if tail_path.exists() { Some(load_tail(&tail_path).ok()?) } else { None };
        let head = TrainedHead { head, steps: meta.steps, final_loss: meta.final_loss, losses: meta.losses };
        Some(Trained { head, tail })
    }

    pub fn save(&self, trained: &Trained) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        if let Some(tail) = &trained.tail {
            save_tail(tail, &self.dir.join(TAIL_FILE))?;
            std::fs::File::open(self.dir.join(TAIL_FILE))?.sync_all()?;
        }
        let trained = &trained.head;
        let head_path = self.dir.join(HEAD_FILE);
        trained.head.save(&head_path)?;
        std::fs::File::open(&head_path)?.sync_all()?;
        let meta = CheckpointMeta {
            key: self.key.clone(),
            steps: trained.steps,
            final_loss: trained.final_loss,
            losses: trained.losses.clone(),
        };
        crate::storage::write_atomic(&self.dir.join("meta.json"), &serde_json::to_vec(&meta)?, true)?;
        self.objects.push_dir(&self.dir)
    }
}
