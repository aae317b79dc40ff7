//! `/jobs`: create (finetune, reindex), list, show, cancel, artifacts.
//! Ingest jobs are created by `POST /datasets`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{AppError, AppResult, ErrorCode};
use super::extract::{AppPath, AppQuery};
use crate::db::jobs::{Job, JobFilter, JobKind, JobStatus};
use crate::state::AppState;
use crate::train::params::{FinetuneParams, check_trainable};

/// Most jobs one `GET /jobs` returns.
const MAX_JOBS_LISTED: usize = 1000;

#[derive(Debug, Deserialize)]
pub struct ListParams {
    dataset: Option<String>,
    status: Option<String>,
    kind: Option<String>,
}

pub async fn list(State(state): State<AppState>, AppQuery(params): AppQuery<ListParams>) -> AppResult<Json<Value>> {
    let status = parse_filter::<JobStatus>(params.status.as_deref(), ErrorCode::InvalidStatus, "status")?;
    let kind = parse_filter::<JobKind>(params.kind.as_deref(), ErrorCode::InvalidKind, "kind")?;
    let filter = JobFilter { dataset: params.dataset.as_deref().filter(|s| !s.is_empty()), status, kind };
    let jobs = state.db.list_jobs(&filter, MAX_JOBS_LISTED).await?;
    Ok(Json(json!({ "jobs": jobs })))
}

/// An optional filter value (empty means none); the error lists the values it may take.
fn parse_filter<T>(raw: Option<&str>, code: ErrorCode, name: &str) -> AppResult<Option<T>>
where
    T: std::str::FromStr + strum::IntoEnumIterator + Into<&'static str>,
{
    let Some(raw) = raw.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    raw.parse().map(Some).map_err(|_| {
        let allowed: Vec<&'static str> = T::iter().map(Into::into).collect();
        AppError::new(code, format!("{name} must be one of {allowed:?}, not {raw:?}"))
    })
}

pub async fn get(State(state): State<AppState>, AppPath(id): AppPath<String>) -> AppResult<Json<Job>> {
    Ok(Json(find(&state, &id).await?))
}

async fn find(state: &AppState, id: &str) -> AppResult<Job> {
    state.db.get_job(id).await?.ok_or_else(|| AppError::new(ErrorCode::JobNotFound, format!("no job with id {id:?}")))
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
    let kind = request.kind.parse::<JobKind>().map_err(|_| {
        AppError::new(
            ErrorCode::UnsupportedJobKind,
            format!("kind must be \"finetune\" or \"reindex\", not {:?}", request.kind),
        )
    })?;
    let job = match kind {
        JobKind::Finetune => queue_finetune(&state, &request.dataset, &request.params).await?,
        JobKind::Reindex => {
            let Some(model) = request.params.get("model").and_then(Value::as_str) else {
                return Err(AppError::new(ErrorCode::InvalidParams, "a reindex job needs params.model, a model id"));
            };
            queue_reindex(&state, &request.dataset, model).await?
        }
        JobKind::Ingest => {
            return Err(AppError::new(
                ErrorCode::UnsupportedJobKind,
                "ingest jobs are created by uploading a catalogue to POST /datasets",
            ));
        }
    };
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// A dataset that can be trained on or reindexed: it exists and is not ingesting.
async fn ready_dataset(state: &AppState, name: &str) -> AppResult<()> {
    let dataset = state.db.get_dataset(name).await?.ok_or_else(|| AppError::dataset_not_found(name))?;
    if dataset.status == crate::db::datasets::STATUS_INGESTING {
        return Err(AppError::new(ErrorCode::DatasetNotReady, format!("dataset {name:?} is still being ingested")));
    }
    Ok(())
}

async fn queue_finetune(state: &AppState, dataset: &str, params: &Value) -> AppResult<Job> {
    ready_dataset(state, dataset).await?;
    let params = FinetuneParams::resolve(&state.settings.finetune, params)
        .map_err(|message| AppError::new(ErrorCode::InvalidParams, message))?;
    let labels = state.db.label_counts(dataset).await?;
    check_trainable(labels.iter().map(|(_, n)| *n as usize))
        .map_err(|message| AppError::new(ErrorCode::DatasetTooSmall, format!("dataset {dataset:?}: {message}")))?;
    let params = serde_json::to_value(&params).map_err(AppError::internal)?;
    let job = state.db.insert_job(&uuid::Uuid::new_v4().to_string(), JobKind::Finetune, dataset, &params).await?;
    state.jobs.notify();
    Ok(job)
}

/// Queues a job that makes `model` the dataset's active model.
pub async fn queue_reindex(state: &AppState, dataset: &str, model: &str) -> AppResult<Job> {
    ready_dataset(state, dataset).await?;
    let record = state.db.get_model(dataset, model).await?.ok_or_else(|| {
        AppError::new(ErrorCode::ModelNotFound, format!("dataset {dataset:?} has no model {model:?}"))
    })?;
    let params = json!({ "model": record.id });
    let job = state.db.insert_job(&uuid::Uuid::new_v4().to_string(), JobKind::Reindex, dataset, &params).await?;
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
        return Err(AppError::new(ErrorCode::ArtifactNotFound, format!("job {id} has no artifact {file:?}")));
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
