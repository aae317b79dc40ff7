//! Stage 3 of a finetune job: train the embedding head on the training items' cached features,
//! or, with `trainable_blocks` above 0, the backbone's last blocks and head convolution with it on
//! the cached activations entering the first of them, or from augmented images with `augment`
//! (or take what was trained from the
//! checkpoint of an interrupted run), and draw its loss curve.

use std::ops::ControlFlow;

use candle_core::{Device, Tensor};
use serde_json::json;

use super::checkpoint::{Checkpoint, Trained};
use super::{Catalogue, Mined, Run};
use crate::error::{ErrorCode, JobFailure};
use crate::jobs::Reporter;
use crate::network::preprocess::decode_image;
use crate::train::images::ImageBatches;
use crate::train::params::mining_name;
use crate::train::{
    BackboneTail, StepReport, TrainError, TrainParams, TrainedHead, WithReference, planned_steps, train_head,
    train_tail,
};

pub(super) fn run(
    run: &Run,
    report: &mut Reporter,
    catalogue: &Catalogue,
    mined: &Mined,
) -> Result<Trained, JobFailure> {
    let params = &run.params;
    let train_params = train_params(run, catalogue, mined);
    let checkpoint = Checkpoint::new(&run.state.objects, &run.artifacts, &catalogue.records, params);
    let trained = match checkpoint.load() {
        Some(trained) => {
            tracing::info!(job = %run.job.id, "resuming from the training checkpoint");
            trained
        }
        None => {
            let trained = train(report, run, catalogue, mined, &train_params)?;
            checkpoint.save(&trained)?;
            trained
        }
    };
    let title = format!("{}: triplet loss, {} mining", run.job.dataset, mining_name(params.mining));
    run.write_artifact("loss-curve.png", &crate::train::plot::loss_curve_png(&trained.head.losses, &title)?)?;
    Ok(trained)
}

/// The trainer's params of this job: its own, P lowered to the labels a batch can draw, and the
/// time budget of its catalogue's size.
pub(super) fn train_params(run: &Run, catalogue: &Catalogue, mined: &Mined) -> TrainParams {
    let params = &run.params;
    TrainParams {
        max_seconds: params.max_training_seconds(catalogue.records.len()),
        ..params.train_params(run.state.embedder.model().dim, params.batch_classes.min(mined.batch_labels))
    }
}

/// Runs the trainer, reporting each step (throttled) and stopping on cancel.
fn train(
    report: &mut Reporter,
    run: &Run,
    catalogue: &Catalogue,
    mined: &Mined,
    params: &TrainParams,
) -> Result<Trained, JobFailure> {
    let injected = params.offline_injection.then(|| mined.pairs.injected_positives());
    let items = mined.train_labels.len();
    let steps = planned_steps(&mined.train_labels, params);
    let trainable_blocks = run.params.trainable_blocks;
    report.stage(
        "training",
        0.3,
        json!({"epoch": 0, "epochs": params.epochs, "step": 0, "steps": steps, "planned_steps": steps,
               "trainable_blocks": trainable_blocks}),
    );
    let mut observe = |step: &StepReport| {
        if run.cancel.is_canceled() {
            return ControlFlow::Break(());
        }
        let detail = json!({
            "epoch": step.epoch + 1, "epochs": params.epochs, "step": step.step + 1, "steps": step.steps,
            "planned_steps": steps,
            "loss": step.loss, "mean_positive_distance": step.mean_positive_distance,
            "mean_negative_distance": step.mean_negative_distance, "active_triplets": step.active_triplets,
            "trainable_blocks": trainable_blocks,
        });
        report.progress("training", 0.3 + 0.5 * (step.step + 1) as f64 / step.steps.max(1) as f64, detail);
        ControlFlow::Continue(())
    };
    let Some(first_block) = run.params.first_trainable_block() else {
        let device = &run.state.device;
        let head =
            train_head(&mined.train_features, &mined.train_labels, injected.as_ref(), params, device, &mut |s, _| {
                observe(s)
            })
            .map_err(failure)?;
        return Ok(Trained { head, tail: None });
    };
    // The blocks train on the CPU, where the block inputs are cached: a GPU would take the
    // depthwise convolution's tap-sum path, which no job has run yet.
    let network = run.state.embedder.network();
    let weights = network.tail_weights(first_block)?;
    let tail = BackboneTail::new(&weights, params.embedding_dim, params.head_init_seed())?;
    // The pretrained features whose distances the geometry term keeps (unused at weight 0).
    let reference = reference_features(mined, params)?;
    let losses = if run.params.augment {
        let state = run.state;
        let max_pixels = state.settings.limits.max_image_pixels;
        let load = |item: usize| -> anyhow::Result<image::RgbImage> {
            let record = &catalogue.records[mined.split.train[item]];
            let bytes = state.blobs.get_blocking(&record.blob)?;
            decode_image(&bytes, max_pixels)
                .map_err(|e| anyhow::anyhow!("stored image of {:?}: {e}", record.item.item_id))
        };
        let inputs = ImageBatches { images: &load, items, network, block: first_block, augment: Some(params.seed) };
        let inputs = WithReference { inputs: &inputs, reference: &reference };
        train_tail(&tail, &inputs, &mined.train_labels, injected.as_ref(), params, &mut |s, _| observe(s))
    } else {
        let inputs = block_inputs(catalogue, &mined.split.train, weights.in_channels()?)?;
        let inputs = WithReference { inputs: &inputs, reference: &reference };
        train_tail(&tail, &inputs, &mined.train_labels, injected.as_ref(), params, &mut |s, _| observe(s))
    }
    .map_err(failure)?;
    let final_loss = losses.last().copied().unwrap_or(0.0);
    let head = TrainedHead { head: tail.head().clone(), steps: losses.len(), final_loss, losses };
    Ok(Trained { head, tail: Some(tail.trained_weights()?) })
}

/// The training items' pretrained features (unit length already: the embedder normalises every
/// feature row), for the geometry term; an empty tensor when its weight is 0 (nothing reads it).
fn reference_features(mined: &Mined, params: &TrainParams) -> Result<Tensor, JobFailure> {
    if params.geometry_weight == 0.0 {
        return Ok(Tensor::zeros((0, params.input_dim), candle_core::DType::F32, &Device::Cpu)?);
    }
    Ok(Tensor::from_slice(&mined.train_features, (mined.train_labels.len(), params.input_dim), &Device::Cpu)?)
}

/// The cached block inputs of the catalogue items `indices`, as one N×H×H×C tensor.
fn block_inputs(catalogue: &Catalogue, indices: &[usize], channels: usize) -> Result<Tensor, JobFailure> {
    let blocks = catalogue
        .blocks
        .as_ref()
        .ok_or_else(|| JobFailure::failed(ErrorCode::Internal, "block inputs were not loaded"))?;
    let len = blocks.first().map_or(0, Vec::len);
    let side = ((len / channels.max(1)) as f64).sqrt().round() as usize;
    if side * side * channels != len {
        return Err(JobFailure::failed(
            ErrorCode::Internal,
            format!("a block input of {len} values is not H×H×{channels}"),
        ));
    }
    let mut flat = Vec::with_capacity(indices.len() * len);
    indices.iter().for_each(|&i| flat.extend_from_slice(&blocks[i]));
    Ok(Tensor::from_vec(flat, (indices.len(), side, side, channels), &Device::Cpu)?)
}

fn failure(err: TrainError) -> JobFailure {
    match err {
        TrainError::Canceled { .. } => JobFailure::Canceled,
        TrainError::Collapsed { .. } => JobFailure::failed(ErrorCode::TrainingCollapsed, err.to_string()),
        TrainError::Diverged { .. } => JobFailure::failed(ErrorCode::TrainingDiverged, err.to_string()),
        TrainError::InvalidInput(_) | TrainError::Sampler(_) | TrainError::Mining(_) => {
            JobFailure::failed(ErrorCode::InvalidParams, err.to_string())
        }
        TrainError::Tensor(_) => JobFailure::failed(ErrorCode::Internal, err.to_string()),
    }
}
