//! `/jobs`: create (finetune, reindex), list, show, cancel, artifacts.
//! Ingest jobs are created by `POST /datasets`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::error::{AppError, AppResult, ErrorBody, ErrorCode};
use super::extract::{AppPath, AppQuery};
use crate::db::jobs::{Job, JobFilter, JobKind, JobStatus};
use crate::state::AppState;
use crate::train::params::{FinetuneParams, check_trainable};

/// Most jobs one `GET /jobs` returns.
const MAX_JOBS_LISTED: usize = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this dataset's jobs.
    dataset: Option<String>,
    /// Only jobs in this status.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// Only jobs of this kind.
    #[param(value_type = Option<JobKind>)]
    kind: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<Job>,
}

/// List jobs, newest first
#[utoipa::path(
    get, path = "/jobs", tag = "jobs", operation_id = "listJobs",
    params(ListParams),
    security(("bearerAuth" = ["read"])),
    responses(
        (status = 200, description = "At most 1000 jobs, newest first.", body = JobList),
        (status = 400, description = "Unknown `status` or `kind`. Codes: `invalid_status`, `invalid_kind`, `invalid_query`.", body = ErrorBody),
    ),
)]
pub async fn list(State(state): State<AppState>, AppQuery(params): AppQuery<ListParams>) -> AppResult<Json<JobList>> {
    let status = parse_filter::<JobStatus>(params.status.as_deref(), ErrorCode::InvalidStatus, "status")?;
    let kind = parse_filter::<JobKind>(params.kind.as_deref(), ErrorCode::InvalidKind, "kind")?;
    let filter = JobFilter { dataset: params.dataset.as_deref().filter(|s| !s.is_empty()), status, kind };
    let jobs = state.db.list_jobs(&filter, MAX_JOBS_LISTED).await?;
    Ok(Json(JobList { jobs }))
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

/// Show a job
#[utoipa::path(
    get, path = "/jobs/{id}", tag = "jobs", operation_id = "getJob",
    params(("id" = String, Path, description = "The job id (a UUID).")),
    security(("bearerAuth" = ["read"])),
    responses(
        (status = 200, description = "The job.", body = Job),
        (status = 404, description = "No such job. Codes: `job_not_found`.", body = ErrorBody),
    ),
)]
pub async fn get(State(state): State<AppState>, AppPath(id): AppPath<String>) -> AppResult<Json<Job>> {
    Ok(Json(find(&state, &id).await?))
}

async fn find(state: &AppState, id: &str) -> AppResult<Job> {
    state.db.get_job(id).await?.ok_or_else(|| AppError::new(ErrorCode::JobNotFound, format!("no job with id {id:?}")))
}

/// The body of `POST /jobs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// `finetune` or `reindex` (ingest jobs are created by `POST /datasets`).
    #[schema(value_type = JobKind)]
    kind: String,
    dataset: String,
    /// `FinetuneParams` for finetune; `ReindexParams` (`{"model": model_id}`) for reindex.
    #[serde(default)]
    #[schema(schema_with = super::openapi::schemas::job_params)]
    params: Value,
}

/// Create a finetune or reindex job
///
/// `{"kind": "finetune", "dataset": name, "params": {...}}` answers `202 Job`. Also
/// `{"kind": "reindex", "dataset": name, "params": {"model": model_id}}` (what
/// `POST /datasets/{name}/models/{id}/activate` queues). Ingest jobs are created by
/// `POST /datasets`.
///
/// A finetune job embeds every item with the backbone (features cached since ingest), holds
/// out `holdout` of each label's items, mines hard pairs offline with the pretrained model,
/// trains the embedding head with the triplet loss, evaluates held-out items against the rest
/// before (active model) and after (new model), and, when promoted, builds the new model's
/// index aside and swaps it in atomically. Stages: `features`, `mining`, `training` (its
/// `detail` has epoch, step, steps and loss), `evaluating`, `indexing`, `swapping`.
///
/// `params` are all optional; unknown keys are refused. Defaults come from the server's
/// `[finetune]` settings; the job shows the resolved params it runs with. See
/// `FinetuneParams`.
///
/// The result is a `FinetuneResult`; the artifacts are `distance-histogram.png`,
/// `loss-curve.png` and `mined-pairs.json`. A collapsed embedding fails the job with
/// `training_collapsed` and promotes nothing.
#[utoipa::path(
    post, path = "/jobs", tag = "jobs", operation_id = "createJob",
    request_body = CreateJob,
    security(("bearerAuth" = ["admin"])),
    responses(
        (status = 202, description = "The queued job, with its resolved params.", body = Job),
        (status = 400, description = "Malformed JSON, an unknown kind, or invalid params (the message names the key). Codes: `invalid_json`, `unsupported_job_kind`, `invalid_params`.", body = ErrorBody),
        (status = 404, description = "No such dataset, or (reindex) no such model. Codes: `dataset_not_found`, `model_not_found`.", body = ErrorBody),
        (status = 409, description = "The dataset is still being ingested, or has fewer than 2 labels with 3 or more items. Codes: `dataset_not_ready`, `dataset_too_small`.", body = ErrorBody),
        (status = 413, description = "The body is too large. Codes: `payload_too_large`.", body = ErrorBody),
        (status = 415, description = "The body is not `Content-Type: application/json`. Codes: `unsupported_media_type`.", body = ErrorBody),
    ),
)]
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

/// Cancel a job
#[utoipa::path(
    post, path = "/jobs/{id}/cancel", tag = "jobs", operation_id = "cancelJob",
    params(("id" = String, Path, description = "The job id (a UUID).")),
    security(("bearerAuth" = ["admin"])),
    responses(
        (status = 202, description = "The job: a queued job is canceled at once, a running one at its next step (so it may still show `running`). A finished job is left as it is.", body = Job),
        (status = 404, description = "No such job. Codes: `job_not_found`.", body = ErrorBody),
    ),
)]
pub async fn cancel(State(state): State<AppState>, AppPath(id): AppPath<String>) -> AppResult<(StatusCode, Json<Job>)> {
    let job = find(&state, &id).await?;
    if !state.db.cancel_queued_job(&id).await? {
        // Here at once if this process runs it; else its worker reads the request at its next
        // heartbeat (`jobs.heartbeat_s`).
        state.jobs.cancel(&id);
        state.db.request_cancel(&id).await?;
    }
    let job = state.db.get_job(&job.id).await?.unwrap_or(job);
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// A file a job produced
///
/// Finetune jobs publish `distance-histogram.png`, `loss-curve.png` (image/png) and
/// `mined-pairs.json` (application/json: the thresholds, histogram and hard pairs as item ids,
/// with the model that mined them).
#[utoipa::path(
    get, path = "/jobs/{id}/artifacts/{file}", tag = "jobs", operation_id = "getArtifact",
    params(("id" = String, Path, description = "The job id (a UUID)."), ("file" = String, Path, description = "One of the job's `artifacts`, e.g. `loss-curve.png`.")),
    security(("bearerAuth" = ["read"])),
    responses(
        (status = 200, description = "The file: `image/png` for `.png`, `application/json` for `.json`, else `application/octet-stream`.", content(
            ([u8] = "image/png"),
            (Object = "application/json"),
            ([u8] = "application/octet-stream"),
        )),
        (status = 404, description = "No such job, or the job has no such artifact. Codes: `job_not_found`, `artifact_not_found`.", body = ErrorBody),
    ),
)]
pub async fn artifact(
    State(state): State<AppState>,
    AppPath((id, file)): AppPath<(String, String)>,
) -> AppResult<Response> {
    let job = find(&state, &id).await?;
    if !job.artifacts.contains(&file) {
        return Err(AppError::new(ErrorCode::ArtifactNotFound, format!("job {id} has no artifact {file:?}")));
    }
    let path = state.data_dir().join("artifacts").join(&job.id).join(&file);
    let objects = state.objects.clone();
    let fetched = path.clone();
    let held = tokio::task::spawn_blocking(move || objects.pull_file(&fetched)).await.map_err(AppError::internal)?;
    if !held.map_err(AppError::internal)? {
        return Err(AppError::new(ErrorCode::ArtifactNotFound, format!("job {id}'s artifact {file:?} is not stored")));
    }
    let bytes = tokio::fs::read(&path).await?;
    let content_type = match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}
