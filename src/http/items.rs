//! `/datasets/{name}/items`: add one item (searchable when answered), list,
//! show, fetch the original bytes, delete (never returned by a search again).

use axum::Json;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{AppError, AppResult, ErrorBody, ErrorCode};
use super::extract::{AppPath, AppQuery, read_field, read_text};
use super::serving;
use crate::archive::{check_item_id, check_label};
use crate::db::items::{InsertError, Item, NewItem};
use crate::state::AppState;
use crate::storage::BlobStore;

/// Most items one page of `GET .../items` returns.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

/// The multipart body of `POST /datasets/{name}/items`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewItemForm {
    /// The image file (JPEG, PNG, WebP, GIF, BMP).
    #[schema(value_type = String, content_media_type = "image/*")]
    image: Vec<u8>,
    /// 1 to 256 printable characters.
    #[schema(min_length = 1, max_length = 256)]
    label: String,
    /// A random UUID when absent. 1 to 256 printable characters, no leading `/`, no `..` segment.
    #[schema(min_length = 1, max_length = 256)]
    item_id: Option<String>,
}

/// Add one item
///
/// The item is stored, embedded with the dataset's active model and indexed: it is
/// searchable when the answer is sent.
#[utoipa::path(
    post, path = "/datasets/{name}/items", tag = "items", operation_id = "addItem",
    params(("name" = String, Path, description = "The dataset name.", pattern = "^[A-Za-z0-9_-]{1,64}$")),
    request_body(content = NewItemForm, content_type = "multipart/form-data"),
    security(("bearerAuth" = ["admin"])),
    responses(
        (status = 201, description = "The item; it is searchable when this answer is sent.", body = Item),
        (status = 400, description = "Missing or invalid field, or an image that cannot be decoded. Codes: `missing_field`, `invalid_label`, `invalid_item_id`, `invalid_image`, `invalid_multipart`, `invalid_field`, `invalid_path`.", body = ErrorBody),
        (status = 404, description = "No such dataset. Codes: `dataset_not_found`.", body = ErrorBody),
        (status = 409, description = "An item with this id already exists in the dataset. Codes: `item_exists`.", body = ErrorBody),
        (status = 413, description = "The image is larger than `limits.max_image_bytes` (default 32 MiB) or has more pixels than `limits.max_image_pixels`. Codes: `payload_too_large`, `image_too_large`.", body = ErrorBody),
        (status = 503, description = "The server cannot answer now; retry later. Codes: `not_ready`, `overloaded`, `model_unavailable`.", body = ErrorBody),
    ),
)]
pub async fn add(
    State(state): State<AppState>,
    AppPath(name): AppPath<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> AppResult<(StatusCode, Json<Item>)> {
    let mut multipart = multipart?;
    let dataset = serving(&state, &name)?;
    let (mut image, mut label, mut item_id) = (None, None, None);
    while let Some(field) = multipart.next_field().await? {
        match field.name() {
            Some("image") => image = Some(read_field(field, state.settings.limits.max_image_bytes, "the image").await?),
            Some("label") => label = Some(read_text(field, "label").await?),
            Some("item_id") => item_id = Some(read_text(field, "item_id").await?),
            _ => {}
        }
    }
    let image =
        image.ok_or_else(|| AppError::new(ErrorCode::MissingField, "the multipart field `image` is required"))?;
    let label =
        label.ok_or_else(|| AppError::new(ErrorCode::MissingField, "the multipart field `label` is required"))?;
    check_label(&label).map_err(|m| AppError::new(ErrorCode::InvalidLabel, m))?;
    let item_id = item_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    check_item_id(&item_id).map_err(|m| AppError::new(ErrorCode::InvalidItemId, m))?;
    if state.db.get_item(&name, &item_id).await?.is_some() {
        return Err(item_exists(&item_id));
    }
    let image = axum::body::Bytes::from(image);
    let prepared = super::search::prepare_upload(&state, image.clone()).await?;
    // What the serving model reads; should a swap to a model reading another block come before
    // the item is added, it is embedded again for that one (below).
    let boundary = dataset.generation.load().model.boundary();
    let input = prepared.input;
    let vector = super::search::embed(&state, input.clone(), boundary).await?;
    let key = BlobStore::new_key(&name);
    state.blobs.put(&key, image.to_vec()).await?;
    let row = NewItem {
        item_id: item_id.clone(),
        label: label.clone(),
        width: prepared.width,
        height: prepared.height,
        content_type: prepared.content_type.to_owned(),
        blob: key.clone(),
    };
    let seqs = match state.db.insert_items(&name, std::slice::from_ref(&row)).await {
        Ok(seqs) => seqs,
        Err(err) => {
            let _ = state.blobs.delete(&key).await;
            return Err(match err {
                InsertError::Duplicate(id) => item_exists(&id),
                InsertError::Db(err) => err.into(),
            });
        }
    };
    let seq = seqs[0];
    let embedder = state.embedder.clone();
    tokio::task::spawn_blocking(move || {
        let _writer = dataset.writer.lock().unwrap_or_else(|e| e.into_inner());
        if dataset.catalog.read().unwrap_or_else(|e| e.into_inner()).get(seq).is_some() {
            // `sync` (PostgreSQL) saw the row first and added the item already.
            return anyhow::Ok(());
        }
        let generation = dataset.generation.load();
        let vector = match generation.model.boundary() {
            now if now == boundary => vector,
            now => embedder.embed_many_at_blocking(vec![input], now)?.remove(0).into_model_input(),
        };
        generation.append(&[(seq, vector)])?;
        let mut catalog = dataset.catalog.write().unwrap_or_else(|e| e.into_inner());
        catalog.insert(seq, &row.item_id, &row.label);
        anyhow::Ok(())
    })
    .await
    .map_err(AppError::internal)?
    .map_err(AppError::internal)?;
    let item = state.db.get_item(&name, &item_id).await?.ok_or_else(|| AppError::internal("item vanished"))?;
    Ok((StatusCode::CREATED, Json(item.item)))
}

fn item_exists(item_id: &str) -> AppError {
    AppError::new(ErrorCode::ItemExists, format!("an item with id {item_id:?} already exists in this dataset"))
}

fn item_not_found(item_id: &str) -> AppError {
    AppError::new(ErrorCode::ItemNotFound, format!("no item with id {item_id:?} in this dataset"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only items with this label.
    label: Option<String>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Items per page.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
}

/// One page of items, ordered by item id.
#[derive(Serialize, ToSchema)]
pub struct ItemPage {
    pub items: Vec<Item>,
    /// The `cursor` of the following page, or `null` after the last.
    pub next: Option<String>,
}

/// List items, by page
#[utoipa::path(
    get, path = "/datasets/{name}/items", tag = "items", operation_id = "listItems",
    params(("name" = String, Path, description = "The dataset name.", pattern = "^[A-Za-z0-9_-]{1,64}$"), ListParams),
    security(("bearerAuth" = ["read"])),
    responses(
        (status = 200, description = "One page of items, ordered by item id; `next` is the cursor of the following page, or null.", body = ItemPage),
        (status = 400, description = "Bad `limit` or query string. Codes: `invalid_limit`, `invalid_query`, `invalid_path`.", body = ErrorBody),
        (status = 404, description = "No such dataset. Codes: `dataset_not_found`.", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    AppPath(name): AppPath<String>,
    AppQuery(params): AppQuery<ListParams>,
) -> AppResult<Json<ItemPage>> {
    state.db.get_dataset(&name).await?.ok_or_else(|| AppError::dataset_not_found(&name))?;
    let limit = match params.limit.as_deref() {
        None | Some("") => DEFAULT_PAGE,
        Some(raw) => raw.parse().ok().filter(|n| (1..=MAX_PAGE).contains(n)).ok_or_else(|| {
            AppError::new(ErrorCode::InvalidLimit, format!("limit must be a whole number from 1 to {MAX_PAGE}"))
        })?,
    };
    let cursor = params.cursor.filter(|c| !c.is_empty());
    let records = state.db.list_items(&name, params.label.as_deref(), cursor.as_deref(), limit + 1).await?;
    let more = records.len() > limit;
    let items: Vec<Item> = records.into_iter().take(limit).map(|r| r.item).collect();
    let next = if more { items.last().map(|i| i.item_id.clone()) } else { None };
    Ok(Json(ItemPage { items, next }))
}

/// Show an item
#[utoipa::path(
    get, path = "/datasets/{name}/items/{item_id}", tag = "items", operation_id = "getItem",
    params(("name" = String, Path, description = "The dataset name.", pattern = "^[A-Za-z0-9_-]{1,64}$"), ("item_id" = String, Path, description = "The item id, percent-encoded as one segment (`sneaker/0042` is `sneaker%2F0042`).", min_length = 1, max_length = 256)),
    security(("bearerAuth" = ["read"])),
    responses(
        (status = 200, description = "The item.", body = Item),
        (status = 404, description = "No such dataset or item. Codes: `dataset_not_found`, `item_not_found`.", body = ErrorBody),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    AppPath((name, item_id)): AppPath<(String, String)>,
) -> AppResult<Json<Item>> {
    state.db.get_dataset(&name).await?.ok_or_else(|| AppError::dataset_not_found(&name))?;
    let record = state.db.get_item(&name, &item_id).await?.ok_or_else(|| item_not_found(&item_id))?;
    Ok(Json(record.item))
}

/// The original image bytes
#[utoipa::path(
    get, path = "/datasets/{name}/items/{item_id}/image", tag = "items", operation_id = "getItemImage",
    params(("name" = String, Path, description = "The dataset name.", pattern = "^[A-Za-z0-9_-]{1,64}$"), ("item_id" = String, Path, description = "The item id, percent-encoded as one segment (`sneaker/0042` is `sneaker%2F0042`).", min_length = 1, max_length = 256)),
    security(("bearerAuth" = ["read"])),
    responses(
        (status = 200, description = "The bytes as uploaded, with their content type.", body = [u8], content_type = "image/*"),
        (status = 404, description = "No such dataset or item. Codes: `dataset_not_found`, `item_not_found`.", body = ErrorBody),
    ),
)]
pub async fn image(
    State(state): State<AppState>,
    AppPath((name, item_id)): AppPath<(String, String)>,
) -> AppResult<Response> {
    state.db.get_dataset(&name).await?.ok_or_else(|| AppError::dataset_not_found(&name))?;
    let record = state.db.get_item(&name, &item_id).await?.ok_or_else(|| item_not_found(&item_id))?;
    let bytes = state.blobs.get(&record.blob).await?;
    Ok(([(header::CONTENT_TYPE, record.content_type)], bytes).into_response())
}

/// Delete an item
#[utoipa::path(
    delete, path = "/datasets/{name}/items/{item_id}", tag = "items", operation_id = "deleteItem",
    params(("name" = String, Path, description = "The dataset name.", pattern = "^[A-Za-z0-9_-]{1,64}$"), ("item_id" = String, Path, description = "The item id, percent-encoded as one segment (`sneaker/0042` is `sneaker%2F0042`).", min_length = 1, max_length = 256)),
    security(("bearerAuth" = ["admin"])),
    responses(
        (status = 204, description = "Deleted; it is never returned by a search again."),
        (status = 404, description = "No such dataset or item. Codes: `dataset_not_found`, `item_not_found`.", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    AppPath((name, item_id)): AppPath<(String, String)>,
) -> AppResult<StatusCode> {
    state.db.get_dataset(&name).await?.ok_or_else(|| AppError::dataset_not_found(&name))?;
    let record = state.db.delete_item(&name, &item_id).await?.ok_or_else(|| item_not_found(&item_id))?;
    if let Some(dataset) = state.dataset(&name) {
        dataset.catalog.write().unwrap_or_else(|e| e.into_inner()).remove(&item_id);
    }
    if let Err(err) = state.blobs.delete(&record.blob).await {
        tracing::warn!(error = %err, blob = %record.blob, "could not remove a deleted item's image");
    }
    Ok(StatusCode::NO_CONTENT)
}
