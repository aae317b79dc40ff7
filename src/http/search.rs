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
use utoipa::{IntoParams, ToSchema};

use super::error::{AppError, AppResult, ErrorBody, ErrorCode};
use super::extract::{AppPath, AppQuery, parse_k, read_field, read_text};
use super::serving;
use crate::embedder::{Arrival, EmbedError, EmbedTiming};
use crate::network::preprocess::DecodeError;
use crate::network::preprocess::{Prepared, prepare};
use crate::state::AppState;
use crate::telemetry::SearchTiming;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// The dataset to search; required (here or as a multipart field).
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    dataset: Option<String>,
    /// Most results, 1 to `limits.max_k` (default 1000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 10)]
    k: Option<String>,
    /// Only items with this label. Empty means no filter.
    label: Option<String>,
}

/// The multipart body of `POST /search`; a field overrides the query parameter of its name.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SearchForm {
    /// The query image (JPEG, PNG, WebP, GIF, BMP).
    #[schema(value_type = String, content_media_type = "image/*")]
    image: Vec<u8>,
    /// The dataset to search; required (here or in the query string).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    dataset: Option<String>,
    /// Most results (1 to `limits.max_k`, default 1000).
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 10)]
    k: Option<String>,
    /// Only items with this label. Empty means no filter.
    label: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHit {
    pub item_id: String,
    pub label: String,
    /// Smaller is more similar.
    pub distance: f32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    pub dataset: String,
    /// The model id that embedded the query and built the index.
    pub model: String,
    /// Sorted by ascending distance.
    pub results: Vec<SearchHit>,
    #[schema(minimum = 0.0)]
    pub took_ms: f64,
}

/// Search a dataset with an image
///
/// Send either multipart/form-data with an `image` file and the `dataset`, `k`, `label`
/// fields, or the raw image as the body with `Content-Type: image/*` and `dataset`, `k`,
/// `label` in the query string. With multipart, a form field overrides the query parameter of
/// the same name. A read key may call this endpoint.
#[utoipa::path(
    post, path = "/search", tag = "search", operation_id = "search",
    params(SearchParams),
    request_body(content(
        (SearchForm = "multipart/form-data"),
        ([u8] = "image/*"),
    )),
    security(("bearerAuth" = ["read"])),
    responses(
        (status = 200, description = "At most `k` results, by ascending distance (fewer only when the dataset holds fewer matching items).", body = SearchResponse),
        (status = 400, description = "Missing field, bad `k`, unreadable image or malformed body. Codes: `missing_field`, `invalid_k`, `invalid_image`, `invalid_multipart`, `invalid_field`, `invalid_body`, `invalid_query`.", body = ErrorBody),
        (status = 404, description = "No such dataset. Codes: `dataset_not_found`.", body = ErrorBody),
        (status = 413, description = "The image is larger than `limits.max_image_bytes` (default 32 MiB) or has more pixels than `limits.max_image_pixels`. Codes: `payload_too_large`, `image_too_large`.", body = ErrorBody),
        (status = 415, description = "The body is neither multipart/form-data nor `image/*`. Codes: `unsupported_media_type`.", body = ErrorBody),
        (status = 503, description = "The server cannot answer now; retry later. Codes: `not_ready`, `overloaded`, `model_unavailable`.", body = ErrorBody),
    ),
)]
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SimilarParams {
    /// Most results, 1 to `limits.max_k` (default 1000).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 10)]
    k: Option<String>,
    /// Only items with this label.
    label: Option<String>,
}

/// Items nearest to a stored item
#[utoipa::path(
    get, path = "/datasets/{name}/items/{item_id}/similar", tag = "search", operation_id = "similarItems",
    params(("name" = String, Path, description = "The dataset name.", pattern = "^[A-Za-z0-9_-]{1,64}$"), ("item_id" = String, Path, description = "The item id, percent-encoded as one segment (`sneaker/0042` is `sneaker%2F0042`).", min_length = 1, max_length = 256), SimilarParams),
    security(("bearerAuth" = ["read"])),
    responses(
        (status = 200, description = "Same shape as `POST /search`; the item itself is left out.", body = SearchResponse),
        (status = 400, description = "Bad `k` or query string. Codes: `invalid_k`, `invalid_query`, `invalid_path`.", body = ErrorBody),
        (status = 404, description = "No such dataset or item. Codes: `dataset_not_found`, `item_not_found`.", body = ErrorBody),
        (status = 503, description = "The server cannot answer now; retry later. Codes: `not_ready`, `overloaded`, `model_unavailable`.", body = ErrorBody),
    ),
)]
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
    let bytes = state.blobs.get(&record.blob).await?;
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

/// Embeds one image into what a model with this `boundary` reads
/// ([`crate::generation::ModelHandle::boundary`]); a full queue is a 503 the client may retry.
pub async fn embed(state: &AppState, input: Vec<f32>, boundary: Option<usize>) -> AppResult<Vec<f32>> {
    embed_timed(state, input, boundary, state.embedder.announce()).await.map(|(vector, _)| vector)
}

/// [`embed`] for a query announced by `arrival`, also telling where its time
/// in the embedder went.
async fn embed_timed(
    state: &AppState,
    input: Vec<f32>,
    boundary: Option<usize>,
    arrival: Arrival,
) -> AppResult<(Vec<f32>, EmbedTiming)> {
    let (embedded, timing) = state.embedder.embed_one_timed(input, boundary, arrival).await.map_err(embed_error)?;
    Ok((embedded.into_model_input(), timing))
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
    let (vector, embedded) = embed_timed(state, input, generation.model.boundary(), arrival).await?;
    timing.queued = embedded.queued;
    timing.gathering = embedded.gathering;
    timing.forward = embedded.forward;
    let model = generation.model.id.clone();
    let searching = Instant::now();
    let hits = tokio::task::spawn_blocking(move || {
        let catalog = dataset.catalog.read().unwrap_or_else(|e| e.into_inner());
        let hits = generation.search(&catalog, &vector, k, label.as_deref(), exclude)?;
        anyhow::Ok(
            hits.into_iter()
                .map(|(item, distance)| SearchHit {
                    item_id: item.item_id.to_string(),
                    label: item.label.to_string(),
                    distance,
                })
                .collect::<Vec<_>>(),
        )
    })
    .await
    .map_err(AppError::internal)?
    .map_err(AppError::internal)?;
    timing.index = searching.elapsed();
    timing.total = started.elapsed();
    state.metrics.observe_search(&timing);
    let took_ms = timing.total.as_secs_f64() * 1000.0;
    Ok(SearchResponse { dataset: name.to_owned(), model, results: hits, took_ms })
}
