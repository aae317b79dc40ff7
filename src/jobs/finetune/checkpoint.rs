//! The checkpoint of a finetune job's training stage: the trained head, saved under the job's
//! artifacts folder with a digest of the item set and params it was trained with, so a job
//! resumed after a restart skips training when it had finished it on the same items.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::db::items::ItemRecord;
use crate::generation::store::HEAD_FILE;
use crate::train::params::FinetuneParams;
use crate::train::{EmbeddingHead, TrainedHead};

/// The trained head of an interrupted job, valid for the same items.
pub struct Checkpoint {
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
    pub fn new(artifacts: &Path, records: &[ItemRecord], params: &FinetuneParams) -> Self {
        let mut hasher = Sha256::new();
        for record in records {
            hasher.update(record.seq.to_le_bytes());
        }
        hasher.update(serde_json::to_vec(params).unwrap_or_default());
        Self { dir: artifacts.join("checkpoint"), key: hex::encode(hasher.finalize()) }
    }

    pub fn load(&self) -> Option<TrainedHead> {
        let meta: CheckpointMeta = serde_json::from_slice(&std::fs::read(self.dir.join("meta.json")).ok()?).ok()?;
        if meta.key != self.key {
            return None;
        }
        let head = EmbeddingHead::load(self.dir.join(HEAD_FILE), &candle_core::Device::Cpu).ok()?;
        Some(TrainedHead { head, steps: meta.steps, final_loss: meta.final_loss, losses: meta.losses })
    }

    pub fn save(&self, trained: &TrainedHead) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
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
        Ok(())
    }
}
