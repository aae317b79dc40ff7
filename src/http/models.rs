//! `/datasets/{name}/models`: a dataset's model generations, and activating
//! one (a `reindex` job that builds or loads its index and swaps it in).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::error::{AppError, AppResult};
use super::extract::AppPath;
use crate::db::jobs::Job;
use crate::state::AppState;

pub async fn list(State(state): State<AppState>, AppPath(name): AppPath<String>) -> AppResult<Json<Value>> {
    state.db.get_dataset(&name).await?.ok_or_else(|| AppError::dataset_not_found(&name))?;
    let models = state.db.list_models(&name).await?;
    Ok(Json(json!({ "models": models })))
}

pub async fn activate(
    State(state): State<AppState>,
    AppPath((name, id)): AppPath<(String, String)>,
) -> AppResult<(StatusCode, Json<Job>)> {
    let job = super::jobs::queue_reindex(&state, &name, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}
