//! `/jobs`: list, show, cancel, artifacts. Ingest jobs are created by
//! `POST /datasets`; `POST /jobs` refuses kinds this version cannot run.

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
pub struct CreateJob {
    kind: String,
    dataset: String,
}

pub async fn create(
    State(state): State<AppState>,
    body: Result<Json<CreateJob>, axum::extract::rejection::JsonRejection>,
) -> AppResult<(StatusCode, Json<Job>)> {
    let Json(request) = body?;
    state.db.get_dataset(&request.dataset).await?.ok_or_else(|| AppError::dataset_not_found(&request.dataset))?;
    Err(AppError::bad_request(
        "unsupported_job_kind",
        format!(
            "jobs of kind {:?} cannot be created in this version (ingest jobs come from POST /datasets)",
            request.kind
        ),
    ))
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
    let content_type = if file.ends_with(".png") { "image/png" } else { "application/octet-stream" };
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}
