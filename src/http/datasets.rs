//! `/datasets`: upload a catalogue (queues an ingest job), list, show, delete.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

use super::check_dataset_name;
use super::error::{AppError, AppResult, ErrorBody, ErrorCode};
use super::extract::{AppPath, DRAIN_ALLOWANCE, drain, read_text};
use crate::archive::{self, ArchiveError, ArchiveLimits};
use crate::db::datasets::{Dataset, STATUS_INGESTING};
use crate::db::jobs::{Job, JobKind};
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

/// A dataset being deleted, marked as busy (like one with a job running here) until dropped.
struct Deleting<'a>(&'a AppState, String);

impl<'a> Deleting<'a> {
    fn mark(state: &'a AppState, name: &str) -> Self {
        let id = format!("delete-{name}");
        state.jobs.register(&id, name);
        Self(state, id)
    }
}

impl Drop for Deleting<'_> {
    fn drop(&mut self) {
        self.0.jobs.unregister(&self.1);
    }
}

/// The multipart body of `POST /datasets`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CatalogueUpload {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64, example = "shoes")]
    name: String,
    /// A `.zip`, `.tar` or `.tar.gz` file (recognised by its content).
    #[schema(value_type = String, content_media_type = "application/octet-stream")]
    archive: Vec<u8>,
}

/// The answer to a catalogue upload.
#[derive(Serialize, ToSchema)]
pub struct Created {
    pub dataset: Dataset,
    /// The queued `ingest` job.
    pub job: Job,
}

/// Upload a catalogue archive (queues an ingest job)
///
/// Two archive layouts are accepted:
///
/// 1. folder per label: `<label>/<file>.{jpg,jpeg,png,webp,gif,bmp}`; the item id is the path
///    without the extension, e.g. `sneaker/0042`.
/// 2. a `labels.csv` at the archive root with header `file,label` (optionally `,item_id`);
///    `file` is the image's path inside the archive. Fields may be quoted.
///
/// The archive is checked (format, entry paths, limits, layout) before anything is created.
/// The ingest job then decodes, stores, embeds and indexes every image; images that fail to
/// decode are skipped and counted in the job's result (`skipped`, `skipped_reasons`).
#[utoipa::path(
    post, path = "/datasets", tag = "datasets", operation_id = "createDataset",
    request_body(content = CatalogueUpload, content_type = "multipart/form-data"),
    security(("bearerAuth" = ["admin"])),
    responses(
        (status = 202, description = "The dataset was created with status `ingesting`, and an `ingest` job queued.", body = Created),
        (status = 400, description = "Bad name, missing field, malformed multipart body or unusable archive. Codes: `invalid_dataset_name`, `missing_field`, `invalid_multipart`, `invalid_field`, `empty_archive`, `unsafe_archive_path`, `invalid_archive`, `invalid_labels_csv`.", body = ErrorBody),
        (status = 409, description = "A dataset with this name already exists. Codes: `dataset_exists`.", body = ErrorBody),
        (status = 413, description = "The upload is larger than `limits.max_upload_bytes` (default 4 GiB), or the archive holds more entries or unpacks to more bytes than allowed. Codes: `payload_too_large`, `archive_too_large`.", body = ErrorBody),
        (status = 415, description = "The file is not a .zip, .tar or .tar.gz archive. Codes: `unsupported_archive`.", body = ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> AppResult<(StatusCode, Json<Created>)> {
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
    // The worker that takes the job may be another process, on another machine.
    let objects = state.objects.clone();
    let stored = path.clone();
    tokio::task::spawn_blocking(move || objects.push_file(&stored))
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)?;
    let model = state.embedder.model().id.clone();
    if !state.db.insert_dataset(&name, STATUS_INGESTING, &model).await? {
        let (objects, stored) = (state.objects.clone(), path.clone());
        tokio::task::spawn_blocking(move || objects.delete_file(&stored))
            .await
            .map_err(AppError::internal)?
            .map_err(AppError::internal)?;
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
    Ok((StatusCode::ACCEPTED, Json(Created { dataset, job })))
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

#[derive(Serialize, ToSchema)]
pub struct DatasetList {
    /// Sorted by name.
    pub datasets: Vec<Dataset>,
}

/// List the datasets
#[utoipa::path(
    get, path = "/datasets", tag = "datasets", operation_id = "listDatasets",
    security(("bearerAuth" = ["read"])),
    responses((status = 200, description = "All datasets, sorted by name.", body = DatasetList)),
)]
pub async fn list(State(state): State<AppState>) -> AppResult<Json<DatasetList>> {
    let datasets = state.db.list_datasets().await?;
    Ok(Json(DatasetList { datasets }))
}

/// Show a dataset
#[utoipa::path(
    get, path = "/datasets/{name}", tag = "datasets", operation_id = "getDataset",
    params(("name" = String, Path, description = "The dataset name.", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    security(("bearerAuth" = ["read"])),
    responses(
        (status = 200, description = "The dataset.", body = Dataset),
        (status = 404, description = "No such dataset. Codes: `dataset_not_found`.", body = ErrorBody),
    ),
)]
pub async fn get(State(state): State<AppState>, AppPath(name): AppPath<String>) -> AppResult<Json<Dataset>> {
    let dataset = state.db.get_dataset(&name).await?.ok_or_else(|| AppError::dataset_not_found(&name))?;
    Ok(Json(dataset))
}

#[derive(Serialize, ToSchema)]
pub struct LabelList {
    /// Sorted by label.
    pub labels: Vec<LabelCount>,
}

#[derive(Serialize, ToSchema)]
pub struct LabelCount {
    pub label: String,
    #[schema(minimum = 1)]
    pub items: i64,
}

/// Item counts per label
///
/// Used by `lookalike eval` for MAP@R.
#[utoipa::path(
    get, path = "/datasets/{name}/labels", tag = "datasets", operation_id = "listLabels",
    params(("name" = String, Path, description = "The dataset name.", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    security(("bearerAuth" = ["read"])),
    responses(
        (status = 200, description = "The labels of the dataset, sorted, with their item counts.", body = LabelList),
        (status = 404, description = "No such dataset. Codes: `dataset_not_found`.", body = ErrorBody),
    ),
)]
pub async fn labels(State(state): State<AppState>, AppPath(name): AppPath<String>) -> AppResult<Json<LabelList>> {
    state.db.get_dataset(&name).await?.ok_or_else(|| AppError::dataset_not_found(&name))?;
    let counts = state.db.label_counts(&name).await?;
    let labels = counts.into_iter().map(|(label, items)| LabelCount { label, items }).collect();
    Ok(Json(LabelList { labels }))
}

/// Delete a dataset
#[utoipa::path(
    delete, path = "/datasets/{name}", tag = "datasets", operation_id = "deleteDataset",
    params(("name" = String, Path, description = "The dataset name.", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    security(("bearerAuth" = ["admin"])),
    responses(
        (status = 204, description = "Deleted: the dataset, its items, images, models and indexes are gone; its queued and running jobs are canceled."),
        (status = 404, description = "No such dataset. Codes: `dataset_not_found`.", body = ErrorBody),
    ),
)]
pub async fn delete(State(state): State<AppState>, AppPath(name): AppPath<String>) -> AppResult<StatusCode> {
    if state.db.get_dataset(&name).await?.is_none() {
        return Err(AppError::dataset_not_found(&name));
    }
    // While its files go, `sync` leaves the dataset alone (as it does one with a job running
    // here), and the row goes before the serving copy: a sync round in between would load the
    // dataset again, pulling its index back from the object store.
    let _deleting = Deleting::mark(&state, &name);
    state.jobs.cancel_dataset(&name);
    state.db.cancel_dataset_jobs(&name).await?;
    state.db.delete_dataset(&name).await?;
    state.remove_dataset(&name);
    let (blobs, objects) = (state.blobs.clone(), state.objects.clone());
    let indexes = state.indexes_dir().join(&name);
    let models = crate::generation::store::dataset_dir(state.data_dir(), &name);
    let features = crate::feature_cache::FeatureCache::dataset_dir(state.data_dir(), &name);
    tokio::task::spawn_blocking(move || {
        blobs.delete_dataset(&name)?;
        for dir in [&indexes, &models, &features] {
            objects.delete_tree(dir)?;
        }
        anyhow::Ok(())
    })
    .await
    .map_err(AppError::internal)??;
    Ok(StatusCode::NO_CONTENT)
}
