//! `/datasets`: upload a catalogue (queues an ingest job), list, show, delete.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::check_dataset_name;
use super::error::{AppError, AppResult, ErrorCode};
use super::extract::{AppPath, DRAIN_ALLOWANCE, drain, read_text};
use crate::archive::{self, ArchiveError, ArchiveLimits};
use crate::db::datasets::{Dataset, STATUS_INGESTING};
use crate::db::jobs::JobKind;
use crate::state::AppState;

/// Deletes an upload file unless the ingest job took it over.
struct UploadGuard(Option<PathBuf>);

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let mut multipart = multipart?;
    let max = state.settings.limits.max_upload_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max.saturating_add(DRAIN_ALLOWANCE)) {
        return Err(AppError::too_large(format!("the upload is larger than the {max} bytes allowed")));
    }
    let file_name = format!("{}.upload", uuid::Uuid::new_v4().simple());
    let path = state.uploads_dir().join(&file_name);
    let mut guard = UploadGuard(None);
    let mut name = None;
    let mut have_archive = false;
    while let Some(field) = multipart.next_field().await? {
        match field.name() {
            Some("name") => {
                let value = read_text(field, "name").await?;
                check_dataset_name(&value)?;
                refuse_taken_name(&state, &value).await?;
                name = Some(value);
            }
            Some("archive") => {
                guard.0 = Some(path.clone());
                stream_to_file(field, &path, max).await?;
                have_archive = true;
            }
            _ => {}
        }
    }
    let name = name.ok_or_else(|| AppError::new(ErrorCode::MissingField, "the multipart field `name` is required"))?;
    if !have_archive {
        return Err(AppError::new(ErrorCode::MissingField, "the multipart field `archive` is required"));
    }
    let limits = &state.settings.limits;
    let limits =
        ArchiveLimits { max_entries: limits.max_archive_entries, max_unpacked_bytes: limits.max_unpacked_bytes };
    let scan_path = path.clone();
    let manifest = tokio::task::spawn_blocking(move || archive::scan(&scan_path, limits))
        .await
        .map_err(AppError::internal)?
        .map_err(archive_error)?;
    let model = state.embedder.model().id.clone();
    if !state.db.insert_dataset(&name, STATUS_INGESTING, &model).await? {
        return Err(name_taken(&name));
    }
    state.db.ensure_pretrained_model(&name, &model, state.embedder.model().dim).await?;
    state.add_dataset(state.new_dataset_state(&name));
    let params = json!({
        "archive": file_name,
        "images": manifest.entries.len(),
        "skipped_at_upload": manifest.skipped_count,
    });
    let job = state.db.insert_job(&uuid::Uuid::new_v4().to_string(), JobKind::Ingest, &name, &params).await?;
    guard.0 = None;
    state.jobs.notify();
    let dataset = state.db.get_dataset(&name).await?.ok_or_else(|| AppError::dataset_not_found(&name))?;
    Ok((StatusCode::ACCEPTED, Json(json!({"dataset": dataset, "job": job}))))
}

async fn refuse_taken_name(state: &AppState, name: &str) -> AppResult<()> {
    if state.db.get_dataset(name).await?.is_some() {
        return Err(name_taken(name));
    }
    Ok(())
}

fn name_taken(name: &str) -> AppError {
    AppError::new(ErrorCode::DatasetExists, format!("a dataset named {name:?} already exists"))
}

async fn stream_to_file(mut field: axum::extract::multipart::Field<'_>, path: &Path, max: u64) -> AppResult<()> {
    let mut file = tokio::fs::File::create(path).await?;
    let mut written = 0u64;
    while let Some(chunk) = field.chunk().await? {
        written += chunk.len() as u64;
        if written > max {
            drain(field).await;
            return Err(AppError::too_large(format!("the archive is larger than the {max} bytes allowed")));
        }
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    file.sync_all().await?;
    Ok(())
}

fn archive_error(err: ArchiveError) -> AppError {
    let message = err.to_string();
    match err {
        ArchiveError::Unsupported => AppError::new(ErrorCode::UnsupportedArchive, message),
        ArchiveError::Empty => AppError::new(ErrorCode::EmptyArchive, message),
        ArchiveError::UnsafePath(_) => AppError::new(ErrorCode::UnsafeArchivePath, message),
        ArchiveError::TooManyEntries(_) | ArchiveError::TooLarge(_) => {
            AppError::new(ErrorCode::ArchiveTooLarge, message)
        }
        ArchiveError::Corrupt(_) => AppError::new(ErrorCode::InvalidArchive, message),
        ArchiveError::BadLabels(_) => AppError::new(ErrorCode::InvalidLabelsCsv, message),
    }
}

pub async fn list(State(state): State<AppState>) -> AppResult<Json<Value>> {
    let datasets = state.db.list_datasets().await?;
    Ok(Json(json!({ "datasets": datasets })))
}

pub async fn get(State(state): State<AppState>, AppPath(name): AppPath<String>) -> AppResult<Json<Dataset>> {
    let dataset = state.db.get_dataset(&name).await?.ok_or_else(|| AppError::dataset_not_found(&name))?;
    Ok(Json(dataset))
}

/// Extra: item counts per label (used by `lookalike eval` for MAP@R).
pub async fn labels(State(state): State<AppState>, AppPath(name): AppPath<String>) -> AppResult<Json<Value>> {
    state.db.get_dataset(&name).await?.ok_or_else(|| AppError::dataset_not_found(&name))?;
    let labels: Vec<Value> = state
        .db
        .label_counts(&name)
        .await?
        .into_iter()
        .map(|(label, items)| json!({"label": label, "items": items}))
        .collect();
    Ok(Json(json!({ "labels": labels })))
}

pub async fn delete(State(state): State<AppState>, AppPath(name): AppPath<String>) -> AppResult<StatusCode> {
    if state.db.get_dataset(&name).await?.is_none() {
        return Err(AppError::dataset_not_found(&name));
    }
    state.jobs.cancel_dataset(&name);
    state.db.cancel_dataset_jobs(&name).await?;
    let removed = state.remove_dataset(&name);
    state.db.delete_dataset(&name).await?;
    let blobs = state.blobs.clone();
    let index_root = removed.map(|d| d.index_root().to_path_buf());
    let models = crate::generation::store::dataset_dir(state.data_dir(), &name);
    let features = crate::feature_cache::FeatureCache::dataset_dir(state.data_dir(), &name);
    tokio::task::spawn_blocking(move || {
        blobs.delete_dataset(&name)?;
        for dir in index_root.iter().chain([&models, &features]) {
            crate::storage::remove_dir_if_exists(dir)?;
        }
        std::io::Result::Ok(())
    })
    .await
    .map_err(AppError::internal)??;
    Ok(StatusCode::NO_CONTENT)
}
