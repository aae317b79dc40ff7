//! `/datasets/{name}/models`: a dataset's model generations, and activating
//! one (a `reindex` job that builds or loads its index and swaps it in).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{AppError, AppResult, ErrorBody};
use super::extract::AppPath;
use crate::db::jobs::Job;
use crate::db::models::ModelRecord;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    /// Oldest first.
    pub models: Vec<ModelRecord>,
}

/// The model generations of a dataset
///
/// Oldest first; exactly one is active. The pretrained backbone is always there (parent null).
#[utoipa::path(
    get, path = "/datasets/{name}/models", tag = "models", operation_id = "listModels",
    params(("name" = String, Path, description = "The dataset name.", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    security(("bearerAuth" = ["read"])),
    responses(
        (status = 200, description = "The models.", body = ModelList),
        (status = 404, description = "No such dataset. Codes: `dataset_not_found`.", body = ErrorBody),
    ),
)]
pub async fn list(State(state): State<AppState>, AppPath(name): AppPath<String>) -> AppResult<Json<ModelList>> {
    state.db.get_dataset(&name).await?.ok_or_else(|| AppError::dataset_not_found(&name))?;
    let models = state.db.list_models(&name).await?;
    Ok(Json(ModelList { models }))
}

/// Serve the dataset with this model (a reindex job)
///
/// Queues a `reindex` job: it loads the model's saved index (or builds one from the cached
/// features), records the model as active and swaps the generation in. Searches answer from
/// the old generation until the swap; no search mixes models.
#[utoipa::path(
    post, path = "/datasets/{name}/models/{id}/activate", tag = "models", operation_id = "activateModel",
    params(("name" = String, Path, description = "The dataset name.", pattern = "^[A-Za-z0-9_-]{1,64}$"), ("id" = String, Path, description = "A model id from `GET /datasets/{name}/models`.")),
    security(("bearerAuth" = ["admin"])),
    responses(
        (status = 202, description = "The queued reindex job.", body = Job),
        (status = 404, description = "No such dataset or model. Codes: `dataset_not_found`, `model_not_found`.", body = ErrorBody),
        (status = 409, description = "The dataset is still being ingested. Codes: `dataset_not_ready`.", body = ErrorBody),
    ),
)]
pub async fn activate(
    State(state): State<AppState>,
    AppPath((name, id)): AppPath<(String, String)>,
) -> AppResult<(StatusCode, Json<Job>)> {
    let job = super::jobs::queue_reindex(&state, &name, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}
