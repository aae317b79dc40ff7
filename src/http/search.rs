//! `POST /search` (multipart or a raw image body) and `GET .../similar`.
//!
//! A search snapshots the dataset's generation once, embeds the query with the
//! embedder (batched with concurrent queries), and searches that generation's
//! index under the catalogue's read lock on a blocking thread.

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use serde::{Deserialize, Serialize};

use super::error::{AppError, AppResult, ErrorCode};
use super::extract::{AppPath, AppQuery, parse_k, read_field, read_text};
use super::serving;
use crate::embedder::{Arrival, EmbedError, EmbedTiming};
use crate::network::preprocess::DecodeError;
use crate::network::preprocess::{Prepared, prepare};
use crate::state::AppState;
use crate::telemetry::SearchTiming;

#[derive(Debug, Default, Deserialize)]
pub struct SearchParams {
    dataset: Option<String>,
    k: Option<String>,
    label: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SearchHit {
    pub item_id: String,
    pub label: String,
    pub distance: f32,
}

#[derive(Debug, Serialize)]
pub struct SearchResponse {
    pub dataset: String,
    pub model: String,
    pub results: Vec<SearchHit>,
    pub took_ms: f64,
}

pub async fn search(
    State(state): State<AppState>,
    AppQuery(mut params): AppQuery<SearchParams>,
    request: Request,
) -> AppResult<Json<SearchResponse>> {
    let started = Instant::now();
    let arrival = state.embedder.announce();
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let image = if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| AppError::new(ErrorCode::InvalidMultipart, e.body_text()))?;
        let mut image = None;
        while let Some(field) = multipart.next_field().await? {
            match field.name() {
                Some("image") => {
                    image =
                        Some(Bytes::from(read_field(field, state.settings.limits.max_image_bytes, "the image").await?))
                }
                Some("dataset") => params.dataset = Some(read_text(field, "dataset").await?),
                Some("k") => params.k = Some(read_text(field, "k").await?),
                Some("label") => params.label = Some(read_text(field, "label").await?),
                _ => {}
            }
        }
        image.ok_or_else(|| AppError::new(ErrorCode::MissingField, "the multipart field `image` is required"))?
    } else if content_type.starts_with("image/") {
        let body = Bytes::from_request(request, &state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::too_large(e.body_text())
            } else {
                AppError::new(ErrorCode::InvalidBody, e.body_text())
            }
        })?;
        let max = state.settings.limits.max_image_bytes;
        if body.len() as u64 > max {
            return Err(AppError::too_large(format!("the image is larger than the {max} bytes allowed")));
        }
        body
    } else {
        return Err(AppError::new(
            ErrorCode::UnsupportedMediaType,
            "send multipart/form-data with an `image` field, or the raw image with Content-Type: image/*",
        ));
    };
    let dataset = params
        .dataset
        .filter(|d| !d.is_empty())
        .ok_or_else(|| AppError::new(ErrorCode::MissingField, "`dataset` is required"))?;
    let k = parse_k(params.k.as_deref(), state.settings.limits.max_k)?;
    let label = params.label.filter(|l| !l.is_empty());
    serving(&state, &dataset)?;
    if image.is_empty() {
        return Err(AppError::new(ErrorCode::InvalidImage, "the image is empty"));
    }
    state.embedder.check_room().map_err(embed_error)?;
    let mut clock = Clock::read(started, arrival);
    let prepared = prepare_upload(&state, image).await?;
    clock.decoded();
    let response = run_search(&state, &dataset, prepared.input, k, label, None, clock).await?;
    Ok(Json(response))
}

#[derive(Debug, Deserialize)]
pub struct SimilarParams {
    k: Option<String>,
    label: Option<String>,
}

pub async fn similar(
    State(state): State<AppState>,
    AppPath((name, item_id)): AppPath<(String, String)>,
    AppQuery(params): AppQuery<SimilarParams>,
) -> AppResult<Json<SearchResponse>> {
    let started = Instant::now();
    let arrival = state.embedder.announce();
    let k = parse_k(params.k.as_deref(), state.settings.limits.max_k)?;
    serving(&state, &name)?;
    let record = state.db.get_item(&name, &item_id).await?.ok_or_else(|| {
        AppError::new(ErrorCode::ItemNotFound, format!("no item with id {item_id:?} in this dataset"))
    })?;
    let blobs = state.blobs.clone();
    let bytes = tokio::task::spawn_blocking(move || blobs.get(&record.blob)).await.map_err(AppError::internal)??;
    state.embedder.check_room().map_err(embed_error)?;
    let mut clock = Clock::read(started, arrival);
    let prepared = prepare_upload(&state, Bytes::from(bytes)).await?;
    clock.decoded();
    let label = params.label.filter(|l| !l.is_empty());
    let response = run_search(&state, &name, prepared.input, k, label, Some(record.seq), clock).await?;
    Ok(Json(response))
}

/// Decodes an uploaded image on a blocking thread; bad bytes are a 4xx.
/// `Bytes` so a caller that also stores the image shares it instead of copying.
pub async fn prepare_upload(state: &AppState, bytes: Bytes) -> AppResult<Prepared> {
    let max_pixels = state.settings.limits.max_image_pixels;
    let input_size = state.embedder.model().input_size;
    let prepared = tokio::task::spawn_blocking(move || prepare(&bytes, max_pixels, input_size))
        .await
        .map_err(AppError::internal)?;
    prepared.map_err(|err| match err {
        DecodeError::TooManyPixels { .. } => AppError::new(ErrorCode::ImageTooLarge, err.to_string()),
        other => AppError::new(ErrorCode::InvalidImage, format!("not a readable image: {other}")),
    })
}

/// Embeds one query; a full queue is a 503 the client may retry.
pub async fn embed(state: &AppState, input: Vec<f32>) -> AppResult<Vec<f32>> {
    embed_timed(state, input, state.embedder.announce()).await.map(|(vector, _)| vector)
}

/// [`embed`] for a query announced by `arrival`, also telling where its time
/// in the embedder went.
async fn embed_timed(state: &AppState, input: Vec<f32>, arrival: Arrival) -> AppResult<(Vec<f32>, EmbedTiming)> {
    state.embedder.embed_one_timed(input, arrival).await.map_err(embed_error)
}

/// A full queue is a 503 the client may retry.
fn embed_error(err: EmbedError) -> AppError {
    match err {
        EmbedError::Overloaded => AppError::new(ErrorCode::Overloaded, err.to_string()),
        EmbedError::Stopped => AppError::new(ErrorCode::ModelUnavailable, err.to_string()),
        EmbedError::Model(_) => AppError::internal(err),
    }
}

/// A search's stopwatch: when its handler started and the stages timed so
/// far, with the query's announcement to the embedder.
struct Clock {
    started: Instant,
    timing: SearchTiming,
    arrival: Arrival,
}

impl Clock {
    /// The request's image is in hand: reading took until now.
    fn read(started: Instant, arrival: Arrival) -> Self {
        Self { started, timing: SearchTiming { read: started.elapsed(), ..SearchTiming::default() }, arrival }
    }

    /// The image is model input: decoding took since the read ended.
    fn decoded(&mut self) {
        self.timing.decode = self.started.elapsed().saturating_sub(self.timing.read);
    }
}

/// Embeds `input` and searches the dataset's generation with it; the
/// search's stages (`clock`, then embedding and index) go to `/metrics`.
async fn run_search(
    state: &AppState,
    name: &str,
    input: Vec<f32>,
    k: usize,
    label: Option<String>,
    exclude: Option<u64>,
    clock: Clock,
) -> AppResult<SearchResponse> {
    let Clock { started, mut timing, arrival } = clock;
    let dataset = serving(state, name)?;
    let generation = dataset.generation.load_full();
    if generation.model.backbone != state.embedder.model().id {
        return Err(AppError::new(ErrorCode::ModelUnavailable, "the dataset's model is not loaded"));
    }
    let (vector, embedded) = embed_timed(state, input, arrival).await?;
    timing.queued = embedded.queued;
    timing.gathering = embedded.gathering;
    timing.forward = embedded.forward;
    let model = generation.model.id.clone();
    let searching = Instant::now();
    let hits = tokio::task::spawn_blocking(move || {
        let catalog = dataset.catalog.read().unwrap_or_else(|e| e.into_inner());
        generation
            .search(&catalog, &vector, k, label.as_deref(), exclude)
            .into_iter()
            .map(|(item, distance)| SearchHit {
                item_id: item.item_id.to_string(),
                label: item.label.to_string(),
                distance,
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(AppError::internal)?;
    timing.index = searching.elapsed();
    timing.total = started.elapsed();
    state.metrics.observe_search(&timing);
    let took_ms = timing.total.as_secs_f64() * 1000.0;
    Ok(SearchResponse { dataset: name.to_owned(), model, results: hits, took_ms })
}
