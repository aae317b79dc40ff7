//! `/jobs`: create (finetune, reindex), list, show, cancel, artifacts.
//! Ingest jobs are created by `POST /datasets`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{AppError, AppResult};
use super::extract::{AppPath, AppQuery};
use crate::app::AppState;
use crate::db::jobs::{Job, JobFilter};
use crate::jobs::finetune::FinetuneParams;

/// Most jobs one `GET /jobs` returns.
const MAX_JOBS_LISTED: usize = 1000;
const STATUSES: [&str; 5] = ["queued", "running", "succeeded", "failed", "canceled"];
const KINDS: [&str; 3] = ["ingest", "finetune", "reindex"];

#[derive(Debug, Deserialize)]
pub struct ListParams {
    dataset: Option<String>,
    status: Option<String>,
    kind: Option<String>,
}

pub async fn list(State(state): State<AppState>, AppQuery(params): AppQuery<ListParams>) -> AppResult<Json<Value>> {
    let status = params.status.filter(|s| !s.is_empty());
    if let Some(status) = &status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(AppError::bad_request("invalid_status", format!("status must be one of {STATUSES:?}")));
    }
    let kind = params.kind.filter(|s| !s.is_empty());
    if let Some(kind) = &kind
        && !KINDS.contains(&kind.as_str())
    {
        return Err(AppError::bad_request("invalid_kind", format!("kind must be one of {KINDS:?}")));
    }
    let filter = JobFilter {
        dataset: params.dataset.as_deref().filter(|s| !s.is_empty()),
        status: status.as_deref(),
        kind: kind.as_deref(),
    };
    let jobs = state.db.list_jobs(&filter, MAX_JOBS_LISTED).await?;
    Ok(Json(json!({ "jobs": jobs })))
}

pub async fn get(State(state): State<AppState>, AppPath(id): AppPath<String>) -> AppResult<Json<Job>> {
    Ok(Json(find(&state, &id).await?))
}

async fn find(state: &AppState, id: &str) -> AppResult<Job> {
    state.db.get_job(id).await?.ok_or_else(|| AppError::not_found("job_not_found", format!("no job with id {id:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    kind: String,
    dataset: String,
    #[serde(default)]
    params: Value,
}

pub async fn create(
    State(state): State<AppState>,
    body: Result<Json<CreateJob>, axum::extract::rejection::JsonRejection>,
) -> AppResult<(StatusCode, Json<Job>)> {
    let Json(request) = body?;
    let job = match request.kind.as_str() {
        "finetune" => queue_finetune(&state, &request.dataset, &request.params).await?,
        "reindex" => {
            let Some(model) = request.params.get("model").and_then(Value::as_str) else {
                return Err(AppError::bad_request("invalid_params", "a reindex job needs params.model, a model id"));
            };
            queue_reindex(&state, &request.dataset, model).await?
        }
        "ingest" => {
            return Err(AppError::bad_request(
                "unsupported_job_kind",
                "ingest jobs are created by uploading a catalogue to POST /datasets",
            ));
        }
        other => {
            return Err(AppError::bad_request(
                "unsupported_job_kind",
                format!("kind must be \"finetune\" or \"reindex\", not {other:?}"),
            ));
        }
    };
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// A dataset that can be trained on or reindexed: it exists and is not ingesting.
async fn ready_dataset(state: &AppState, name: &str) -> AppResult<()> {
    let dataset = state.db.get_dataset(name).await?.ok_or_else(|| AppError::dataset_not_found(name))?;
    if dataset.status == crate::db::datasets::STATUS_INGESTING {
        return Err(AppError::conflict("dataset_not_ready", format!("dataset {name:?} is still being ingested")));
    }
    Ok(())
}

async fn queue_finetune(state: &AppState, dataset: &str, params: &Value) -> AppResult<Job> {
    ready_dataset(state, dataset).await?;
    let params = FinetuneParams::resolve(&state.settings.finetune, params)
        .map_err(|message| AppError::bad_request("invalid_params", message))?;
    let labels = state.db.label_counts(dataset).await?;
    let usable = labels.iter().filter(|(_, n)| *n >= 3).count();
    if usable < 2 {
        return Err(AppError::conflict(
            "dataset_too_small",
            format!(
                "fine-tuning needs at least 2 labels with 3 or more items (one held out, two to train on); \
                 dataset {dataset:?} has {usable}"
            ),
        ));
    }
    let params = serde_json::to_value(&params).map_err(AppError::internal)?;
    let job = state.db.insert_job(&uuid::Uuid::new_v4().to_string(), "finetune", dataset, &params).await?;
    state.jobs.notify();
    Ok(job)
}

/// Queues a job that makes `model` the dataset's active model.
pub async fn queue_reindex(state: &AppState, dataset: &str, model: &str) -> AppResult<Job> {
    ready_dataset(state, dataset).await?;
    let record =
        state.db.get_model(dataset, model).await?.ok_or_else(|| {
            AppError::not_found("model_not_found", format!("dataset {dataset:?} has no model {model:?}"))
        })?;
    let params = json!({ "model": record.id });
    let job = state.db.insert_job(&uuid::Uuid::new_v4().to_string(), "reindex", dataset, &params).await?;
    state.jobs.notify();
    Ok(job)
}

pub async fn cancel(State(state): State<AppState>, AppPath(id): AppPath<String>) -> AppResult<(StatusCode, Json<Job>)> {
    let job = find(&state, &id).await?;
    if !state.db.cancel_queued_job(&id).await? {
        state.jobs.cancel(&id);
    }
    let job = state.db.get_job(&job.id).await?.unwrap_or(job);
    Ok((StatusCode::ACCEPTED, Json(job)))
}

pub async fn artifact(
    State(state): State<AppState>,
    AppPath((id, file)): AppPath<(String, String)>,
) -> AppResult<Response> {
    let job = find(&state, &id).await?;
    if !job.artifacts.contains(&file) {
        return Err(AppError::not_found("artifact_not_found", format!("job {id} has no artifact {file:?}")));
    }
    let path = state.data_dir().join("artifacts").join(&job.id).join(&file);
    let bytes = tokio::fs::read(&path).await?;
    let content_type = match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}
