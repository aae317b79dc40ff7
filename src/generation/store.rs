//! Trained models on disk: a fine-tuned model is the shared pretrained backbone plus a trained
//! head saved under `models/{dataset}/{model_id}/` (`head.safetensors` and `model.json`, written
//! aside and renamed into place), and, when it trained the backbone's last blocks, those blocks
//! (`tail.safetensors`, [`crate::network::tail::save_tail`]). The `models` table records each one (`db::models`); the index
//! built with it lives under `indexes/{dataset}/{model_id}/` like the pretrained model's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{ModelHandle, PretrainedShare};
use crate::db::models::ModelRecord;
use crate::generation::projection::Projection;
use crate::network::EmbeddingModel;
use crate::network::lite0::TailWeights;
use crate::network::tail::{Tail, load_tail, save_tail};
use crate::train::EmbeddingHead;

pub const HEAD_FILE: &str = "head.safetensors";
pub const MODEL_META_FILE: &str = "model.json";
pub const TAIL_FILE: &str = "tail.safetensors";

/// The folder of a dataset's trained models.
pub fn dataset_dir(data_dir: &Path, dataset: &str) -> PathBuf {
    data_dir.join("models").join(dataset)
}

/// The folder of one trained model.
pub fn model_dir(data_dir: &Path, dataset: &str, model_id: &str) -> PathBuf {
    dataset_dir(data_dir, dataset).join(model_id)
}

/// Saves a trained head (and the blocks trained with it) and its description crash-safely.
pub fn save_model(
    dir: &Path,
    head: &EmbeddingHead,
    tail: Option<&TailWeights>,
    meta: &serde_json::Value,
) -> anyhow::Result<()> {
    crate::storage::replace_dir(dir, |tmp| {
        head.save(tmp.join(HEAD_FILE))?;
        std::fs::File::open(tmp.join(HEAD_FILE))?.sync_all()?;
        if let Some(tail) = tail {
            save_tail(tail, &tmp.join(TAIL_FILE))?;
            std::fs::File::open(tmp.join(TAIL_FILE))?.sync_all()?;
        }
        crate::storage::write_atomic(&tmp.join(MODEL_META_FILE), &serde_json::to_vec_pretty(meta)?, true)?;
        Ok(())
    })
}

/// Blocking: the model a record describes, ready to embed with (fetched from the object store when
/// this data dir lacks it; its head and tail loaded; `network` is the
/// shared trunk, whose weights give a blended model's pretrained part).
pub fn load_handle(
    objects: &crate::storage::Objects,
    dataset: &str,
    record: &ModelRecord,
    network: &EmbeddingModel,
    device: &candle_core::Device,
) -> anyhow::Result<ModelHandle> {
    if record.is_pretrained() {
        return Ok(ModelHandle::pretrained(&record.backbone));
    }
    let dir = model_dir(objects.data_dir(), dataset, &record.id);
    anyhow::ensure!(objects.pull_dir(&dir)?, "model {} is not in the object store {}", record.id, objects.location());
    let head = Projection::load(&dir.join(HEAD_FILE), device)?;
    let tail = match dir.join(TAIL_FILE) {
        path if path.exists() => Some(Arc::new(Tail::new(&load_tail(&path)?)?)),
        _ => None,
    };
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(MODEL_META_FILE))?)?;
    let share = meta.get(PRETRAINED_SHARE).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let boundary = tail.as_ref().map(|t| t.first_block());
    let pretrained = pretrained_share(share, boundary, network)?;
    let (id, backbone) = (record.id.clone(), record.backbone.clone());
    Ok(ModelHandle { id, backbone, head: Some(Arc::new(head)), tail, pretrained })
}

/// Key of a model's share of the pretrained geometry in its `model.json`.
pub const PRETRAINED_SHARE: &str = "pretrained_share";

/// The blend of a model with share `share` (none at 0) reading block inputs at `boundary`.
pub fn pretrained_share(
    share: f64,
    boundary: Option<usize>,
    network: &EmbeddingModel,
) -> anyhow::Result<Option<PretrainedShare>> {
    if share <= 0.0 {
        return Ok(None);
    }
    let frozen = match boundary {
        Some(block) => Some(Arc::new(Tail::new(&network.tail_weights(block)?)?)),
        None => None,
    };
    Ok(Some(PretrainedShare { share: share as f32, frozen }))
}
