//! Stage 3 of a finetune job: train the embedding head on the training items' cached features
//! (or take the trained head from the checkpoint of an interrupted run), and draw its loss curve.

use std::ops::ControlFlow;

use serde_json::json;

use super::checkpoint::Checkpoint;
use super::{Catalogue, Mined, Run};
use crate::error::{ErrorCode, JobFailure};
use crate::jobs::Reporter;
use crate::train::params::mining_name;
use crate::train::{EmbeddingHead, StepReport, TrainError, TrainParams, TrainedHead, train_head};

pub(super) fn run(
    run: &Run,
    report: &mut Reporter,
    catalogue: &Catalogue,
    mined: &Mined,
) -> Result<TrainedHead, JobFailure> {
    let params = &run.params;
    let batch_classes = params.batch_classes.min(mined.batch_labels);
    let train_params = params.train_params(run.state.embedder.model().dim, batch_classes);
    let checkpoint = Checkpoint::new(&run.artifacts, &catalogue.records, params);
    let trained = match checkpoint.load() {
        Some(trained) => {
            tracing::info!(job = %run.job.id, "resuming from the trained head checkpoint");
            trained
        }
        None => {
            let trained = train(report, run, mined, &train_params)?;
            checkpoint.save(&trained)?;
            trained
        }
    };
    let title = format!("{}: triplet loss, {} mining", run.job.dataset, mining_name(params.mining));
    run.write_artifact("loss-curve.png", &crate::train::plot::loss_curve_png(&trained.losses, &title)?)?;
    Ok(trained)
}

/// Runs the trainer, reporting each step (throttled) and stopping on cancel.
fn train(report: &mut Reporter, run: &Run, mined: &Mined, params: &TrainParams) -> Result<TrainedHead, JobFailure> {
    let injected = params.offline_injection.then(|| mined.pairs.injected_positives());
    let items = mined.train_labels.len();
    let steps = params.epochs * (items / (params.batch_classes * params.batch_per_class)).max(1);
    report.stage("training", 0.3, json!({"epoch": 0, "epochs": params.epochs, "step": 0, "steps": steps}));
    let mut observer = |step: &StepReport, _: &EmbeddingHead| {
        if run.cancel.is_canceled() {
            return ControlFlow::Break(());
        }
        let detail = json!({
            "epoch": step.epoch + 1, "epochs": params.epochs, "step": step.step + 1, "steps": steps,
            "loss": step.loss, "mean_positive_distance": step.mean_positive_distance,
            "mean_negative_distance": step.mean_negative_distance, "active_triplets": step.active_triplets,
        });
        report.progress("training", 0.3 + 0.5 * (step.step + 1) as f64 / steps as f64, detail);
        ControlFlow::Continue(())
    };
    let device = &run.state.device;
    train_head(&mined.train_features, &mined.train_labels, injected.as_ref(), params, device, &mut observer).map_err(
        |err| match err {
            TrainError::Canceled { .. } => JobFailure::Canceled,
            TrainError::Collapsed { .. } => JobFailure::failed(ErrorCode::TrainingCollapsed, err.to_string()),
            TrainError::Diverged { .. } => JobFailure::failed(ErrorCode::TrainingDiverged, err.to_string()),
            TrainError::InvalidInput(_) | TrainError::Sampler(_) | TrainError::Mining(_) => {
                JobFailure::failed(ErrorCode::InvalidParams, err.to_string())
            }
            TrainError::Tensor(_) => JobFailure::failed(ErrorCode::Internal, err.to_string()),
        },
    )
}
