//! Every error code lookalike answers with, and how a job ends other than by success.
//!
//! [`ErrorCode`] is the one list: an HTTP error body (`http::error::AppError`) and a failed
//! job's `error.code` both name one of its variants, written in snake_case (`dataset_not_found`).
//! Each variant has the HTTP status it is answered with; codes that only a job can end with
//! (`training_collapsed`, `interrupted`, ...) carry the status an HTTP answer would have had, so
//! the mapping stays total. `docs/API.md` lists them all, and a test checks that the OpenAPI
//! document names each one.

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// A stable, machine-readable name for what went wrong (`API.md`: error codes).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::EnumIter,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumMessage,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    // Requests the server cannot take as they are.
    /// No `Authorization: Bearer` header, or an unknown key.
    Unauthorized,
    /// A read-only key used where an admin key is needed.
    Forbidden,
    /// No such endpoint.
    NotFound,
    /// The endpoint does not take that method.
    MethodNotAllowed,
    /// A required multipart field or query parameter is missing.
    MissingField,
    /// A multipart text field is not UTF-8.
    InvalidField,
    /// The body is not valid multipart/form-data.
    InvalidMultipart,
    /// The body is not valid JSON for the endpoint.
    InvalidJson,
    /// A query parameter cannot be read.
    InvalidQuery,
    /// A path segment cannot be read.
    InvalidPath,
    /// A raw search body that is not an image content type.
    InvalidBody,
    /// The request's content type is not one the endpoint takes.
    UnsupportedMediaType,
    /// The body is larger than the endpoint's limit.
    PayloadTooLarge,
    /// `k` is not a whole number from 1 to `limits.max_k`.
    InvalidK,
    /// `limit` of a listing is out of range.
    InvalidLimit,
    /// A job `status` filter that is not a job status.
    InvalidStatus,
    /// A job `kind` filter that is not a job kind.
    InvalidKind,
    /// A job's `params` are not valid for its kind.
    InvalidParams,
    /// A job kind that cannot be created through `POST /jobs`.
    UnsupportedJobKind,

    // Datasets and their catalogues.
    /// A dataset name that is not 1 to 64 characters of `[A-Za-z0-9_-]`.
    InvalidDatasetName,
    /// A dataset with this name already exists.
    DatasetExists,
    /// No dataset with this name.
    DatasetNotFound,
    /// The dataset is still being ingested.
    DatasetNotReady,
    /// Too few labelled items to fine-tune on.
    DatasetTooSmall,
    /// The upload is not a zip, tar or tar.gz archive.
    UnsupportedArchive,
    /// The archive holds no image.
    EmptyArchive,
    /// An archive entry with an absolute path, `..`, or a link.
    UnsafeArchivePath,
    /// The archive has more entries or unpacks to more bytes than allowed.
    ArchiveTooLarge,
    /// The archive cannot be read.
    InvalidArchive,
    /// The archive's `labels.csv` cannot be read.
    InvalidLabelsCsv,

    // Items and images.
    /// A label that is not 1 to 256 printable characters.
    InvalidLabel,
    /// An item id that is not 1 to 256 printable characters, starts with `/` or has a `..` segment.
    InvalidItemId,
    /// An item with this id already exists in the dataset.
    ItemExists,
    /// No item with this id in the dataset.
    ItemNotFound,
    /// The image is not one of the accepted formats or cannot be decoded.
    InvalidImage,
    /// The image has more pixels than `limits.max_image_pixels`.
    ImageTooLarge,

    // Jobs and models.
    /// No job with this id.
    JobNotFound,
    /// The job has no artifact with this name.
    ArtifactNotFound,
    /// The dataset has no model with this id.
    ModelNotFound,
    /// The model cannot be used: it was trained on another backbone, or the embedder stopped.
    ModelUnavailable,

    // The server's state.
    /// Still loading models and indexes after a start.
    NotReady,
    /// The model's queue is full: retry later.
    Overloaded,
    /// A fault of the server; the detail is in its log.
    Internal,

    // Only a job ends with these (its `error.code`).
    /// A job row that cannot be run (an ingest job without its archive).
    InvalidJob,
    /// Offline mining could not run on the training items.
    MiningFailed,
    /// The embedding collapsed while training; nothing was promoted.
    TrainingCollapsed,
    /// The loss became NaN or infinite while training; nothing was promoted.
    TrainingDiverged,
    /// A new generation failed its check before going into service; the old one serves on.
    GenerationCheckFailed,
    /// The worker running the job stopped (a restart, a crash, a lost lease), and the job was not
    /// resumed.
    Interrupted,
    /// The job's dataset was deleted before the job ran.
    DatasetDeleted,
}

impl ErrorCode {
    /// The snake_case name clients match on.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The HTTP status an answer with this code carries.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden => StatusCode::FORBIDDEN,
            NotFound | DatasetNotFound | ItemNotFound | JobNotFound | ArtifactNotFound | ModelNotFound => {
                StatusCode::NOT_FOUND
            }
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            UnsupportedMediaType | UnsupportedArchive => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PayloadTooLarge | ArchiveTooLarge | ImageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            DatasetExists | ItemExists | DatasetNotReady | DatasetTooSmall | DatasetDeleted => StatusCode::CONFLICT,
            NotReady | Overloaded | ModelUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            MiningFailed | TrainingCollapsed | TrainingDiverged => StatusCode::UNPROCESSABLE_ENTITY,
            Internal | GenerationCheckFailed | Interrupted => StatusCode::INTERNAL_SERVER_ERROR,
            MissingField | InvalidField | InvalidMultipart | InvalidJson | InvalidQuery | InvalidPath | InvalidBody
            | InvalidK | InvalidLimit | InvalidStatus | InvalidKind | InvalidParams | UnsupportedJobKind
            | InvalidDatasetName | EmptyArchive | UnsafeArchivePath | InvalidArchive | InvalidLabelsCsv
            | InvalidLabel | InvalidItemId | InvalidImage | InvalidJob => StatusCode::BAD_REQUEST,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a job ended, other than by success.
#[derive(Debug, thiserror::Error)]
pub enum JobFailure {
    #[error("canceled")]
    Canceled,
    #[error("{message}")]
    Failed { code: ErrorCode, message: String },
}

impl JobFailure {
    pub fn failed(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Failed { code, message: message.into() }
    }
}

impl From<anyhow::Error> for JobFailure {
    fn from(err: anyhow::Error) -> Self {
        Self::failed(ErrorCode::Internal, format!("{err:#}"))
    }
}

impl From<sqlx::Error> for JobFailure {
    fn from(err: sqlx::Error) -> Self {
        Self::failed(ErrorCode::Internal, format!("database: {err}"))
    }
}

impl From<candle_core::Error> for JobFailure {
    fn from(err: candle_core::Error) -> Self {
        Self::failed(ErrorCode::Internal, format!("tensor: {err}"))
    }
}

impl From<std::io::Error> for JobFailure {
    fn from(err: std::io::Error) -> Self {
        Self::failed(ErrorCode::Internal, format!("io: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::IntoEnumIterator;

    #[test]
    fn names_are_snake_case_and_round_trip() {
        for code in ErrorCode::iter() {
            let name = code.as_str();
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}");
            assert_eq!(name.parse::<ErrorCode>().ok(), Some(code));
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(name), "serde and strum agree");
            assert!(code.status().is_client_error() || code.status().is_server_error(), "{name}");
        }
        assert_eq!(ErrorCode::DatasetNotFound.as_str(), "dataset_not_found");
        assert_eq!(ErrorCode::InvalidK.as_str(), "invalid_k");
    }
}
