//! The `jobs` table: the persisted job queue (meilisearch's task model).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Db, DbRow, Pool, on_pool};
use crate::error::ErrorCode;

/// A job as the API shows it (`API.md`: `Job`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    /// A UUID.
    pub id: String,
    pub kind: JobKind,
    pub dataset: String,
    pub status: JobStatus,
    /// What the job is doing: `queued`, `starting`, `ingesting`; finetune: `features`, `mining`,
    /// `training`, `evaluating`, `indexing`, `swapping`; reindex: `features`, `indexing`,
    /// `swapping`; `resuming` after a restart; then the final status.
    pub stage: String,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub progress: f64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// Why a failed job failed; some canceled jobs say why too (`dataset_deleted`).
    pub error: Option<JobError>,
    /// The parameters the job runs with: a finetune job's resolved `FinetuneParams`, a reindex
    /// job's `{"model": id}`, an ingest job's archive and image count.
    #[schema(value_type = Object)]
    pub params: Value,
    /// `null` until the job succeeds; then `IngestResult`, `FinetuneResult` or `ReindexResult`
    /// by kind.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// File names, fetched with `GET /jobs/{id}/artifacts/{file}`.
    pub artifacts: Vec<String>,
    /// The current stage's figures (a finetune job's `epoch`, `epochs`, `step`, `steps`, `loss`,
    /// `mean_positive_distance`, `mean_negative_distance`, `active_triplets`, ...); `null` when none.
    #[schema(value_type = Option<Object>)]
    pub detail: Option<Value>,
    /// How many times the job was started: above 1 when it was resumed after a restart (finetune
    /// and reindex jobs are, up to `jobs.max_attempts`).
    #[schema(minimum = 0)]
    pub attempts: i64,
    /// The `server.instance` name of the worker process running the job, or that ran it last;
    /// `null` while it waits in the queue.
    pub worker: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobError {
    #[schema(value_type = ErrorCode)]
    pub code: String,
    pub message: String,
}

/// What a job does.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::EnumIter,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum JobKind {
    /// Decode, store, embed and index an uploaded catalogue (`POST /datasets`).
    Ingest,
    /// Mine, train, evaluate and maybe promote a new model (`POST /jobs`).
    Finetune,
    /// Serve the dataset with another of its models (`POST .../models/{id}/activate`).
    Reindex,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether a job of this kind that a restart interrupted is queued again instead of failed:
    /// its work is a pure function of its params and the stored items, with checkpoints.
    pub fn is_resumable(self) -> bool {
        matches!(self, Self::Finetune | Self::Reindex)
    }
}

/// Where a job is in its life: queued, running, then one of the three ends.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::EnumIter,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Filters of `GET /jobs`.
#[derive(Debug, Default)]
pub struct JobFilter<'a> {
    pub dataset: Option<&'a str>,
    pub status: Option<JobStatus>,
    pub kind: Option<JobKind>,
}

fn parse_column<T: std::str::FromStr>(row: &impl DbRow, column: &str) -> Result<T, sqlx::Error> {
    let text = row.text(column)?;
    text.parse().map_err(|_| sqlx::Error::Decode(format!("unknown {column} {text:?} in the jobs table").into()))
}

pub(super) fn from_row(row: &impl DbRow) -> Result<Job, sqlx::Error> {
    let json = |column: &str| -> Result<Option<Value>, sqlx::Error> {
        let text = row.opt_text(column)?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| sqlx::Error::Decode(Box::new(e)))).transpose()
    };
    let code = row.opt_text("error_code")?;
    let message = row.opt_text("error_message")?;
    let artifacts = json("artifacts")?.and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
    Ok(Job {
        id: row.text("id")?,
        kind: parse_column(row, "kind")?,
        dataset: row.text("dataset")?,
        status: parse_column(row, "status")?,
        stage: row.text("stage")?,
        progress: row.float("progress")?,
        created_at: row.text("created_at")?,
        started_at: row.opt_text("started_at")?,
        finished_at: row.opt_text("finished_at")?,
        error: code.map(|code| JobError { code, message: message.unwrap_or_default() }),
        params: json("params")?.unwrap_or(Value::Null),
        result: json("result")?,
        artifacts,
        detail: json("detail")?,
        attempts: row.int("attempts")?,
        worker: row.opt_text("worker")?,
    })
}

/// Which job [`Db::start_next_job`] takes: the oldest queued. On PostgreSQL, where several
/// workers may ask at once, the row is locked and the others skip it.
const NEXT_QUEUED: &str = "SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, rowid LIMIT 1";

impl Db {
    pub async fn insert_job(&self, id: &str, kind: JobKind, dataset: &str, params: &Value) -> Result<Job, sqlx::Error> {
        let sql = "INSERT INTO jobs (id, kind, dataset, status, stage, progress, created_at, params)
                   VALUES ($1, $2, $3, 'queued', 'queued', 0, $4, $5)";
        let (now, params) = (super::now(), params.to_string());
        on_pool!(self, pool => {
            sqlx::query(sql).bind(id).bind(kind.as_str()).bind(dataset).bind(&now).bind(&params).execute(pool).await?;
        });
        // Read back before the workers are told: the caller answers with the job as queued.
        let job = self.get_job(id).await?.ok_or(sqlx::Error::RowNotFound)?;
        self.notify(super::Channel::Jobs, id).await;
        Ok(job)
    }

    pub async fn get_job(&self, id: &str) -> Result<Option<Job>, sqlx::Error> {
        on_pool!(self, pool => {
            let row = sqlx::query("SELECT * FROM jobs WHERE id = $1").bind(id).fetch_optional(pool).await?;
            row.as_ref().map(from_row).transpose()
        })
    }

    /// Jobs matching the filter, newest first.
    pub async fn list_jobs(&self, filter: &JobFilter<'_>, limit: usize) -> Result<Vec<Job>, sqlx::Error> {
        let sql = "SELECT * FROM jobs
                   WHERE ($1 IS NULL OR dataset = $1) AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR kind = $3)
                   ORDER BY created_at DESC, rowid DESC LIMIT $4";
        on_pool!(self, pool => {
            let rows = sqlx::query(sql)
                .bind(filter.dataset)
                .bind(filter.status.map(JobStatus::as_str))
                .bind(filter.kind.map(JobKind::as_str))
                .bind(limit as i64)
                .fetch_all(pool)
                .await?;
            rows.iter().map(from_row).collect()
        })
    }

    /// The oldest queued job, marked running by `worker` with a fresh heartbeat (its lease);
    /// `None` when none is queued. Safe to call from several processes at once on PostgreSQL
    /// (each takes a different job).
    pub async fn start_next_job(&self, worker: &str) -> Result<Option<Job>, sqlx::Error> {
        let lock = match self.pool {
            Pool::Sqlite(_) => "",
            Pool::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, $1), stage = 'starting',
                attempts = attempts + 1, worker = $2, heartbeat_at = $1, cancel_requested = FALSE
             WHERE id = ({NEXT_QUEUED}{lock}) RETURNING *"
        );
        let now = super::now();
        on_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&now).bind(worker).fetch_optional(pool).await?;
            row.as_ref().map(from_row).transpose()
        })
    }

    pub async fn set_job_progress(&self, id: &str, stage: &str, progress: f64) -> Result<(), sqlx::Error> {
        let sql = "UPDATE jobs SET stage = $1, progress = $2 WHERE id = $3 AND status = 'running'";
        let progress = progress.clamp(0.0, 1.0);
        on_pool!(self, pool => {
            sqlx::query(sql).bind(stage).bind(progress).bind(id).execute(pool).await?;
        });
        Ok(())
    }

    /// Like `set_job_progress`, with the stage's figures.
    pub async fn set_job_detail(
        &self,
        id: &str,
        stage: &str,
        progress: f64,
        detail: &Value,
    ) -> Result<(), sqlx::Error> {
        let sql = "UPDATE jobs SET stage = $1, progress = $2, detail = $3 WHERE id = $4 AND status = 'running'";
        let (progress, detail) = (progress.clamp(0.0, 1.0), detail.to_string());
        on_pool!(self, pool => {
            sqlx::query(sql).bind(stage).bind(progress).bind(&detail).bind(id).execute(pool).await?;
        });
        Ok(())
    }

    /// Lists a file the job wrote under its artifacts folder.
    pub async fn add_job_artifact(&self, id: &str, file: &str) -> Result<(), sqlx::Error> {
        // Read, then write, in one transaction; PostgreSQL locks the row for it (SQLite's writer
        // lock already serialises the two).
        let read = match self.pool {
            Pool::Sqlite(_) => "SELECT artifacts FROM jobs WHERE id = $1",
            Pool::Postgres(_) => "SELECT artifacts FROM jobs WHERE id = $1 FOR UPDATE",
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let text: String = sqlx::query_scalar(read).bind(id).fetch_one(&mut *tx).await?;
            let mut files: Vec<String> = serde_json::from_str(&text).unwrap_or_default();
            if !files.iter().any(|f| f == file) {
                files.push(file.to_owned());
            }
            sqlx::query("UPDATE jobs SET artifacts = $1 WHERE id = $2")
                .bind(serde_json::to_string(&files).unwrap_or_else(|_| "[]".into()))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
    }

    /// Ends a job that `worker` runs: `status` is succeeded, failed or canceled. Returns
    /// false, recording nothing, when the job is no longer running on `worker` (its lease was
    /// lost: another worker took it back).
    pub async fn finish_job(
        &self,
        id: &str,
        worker: &str,
        status: JobStatus,
        result: Option<&Value>,
        error: Option<(ErrorCode, &str)>,
    ) -> Result<bool, sqlx::Error> {
        let sql = "UPDATE jobs SET status = $1, stage = $1, finished_at = $2, result = $3, error_code = $4,
                       error_message = $5, progress = CASE WHEN $1 = 'succeeded' THEN 1.0 ELSE progress END
                   WHERE id = $6 AND worker = $7 AND status = 'running'";
        let (now, result) = (super::now(), result.map(Value::to_string));
        let done = on_pool!(self, pool => {
            sqlx::query(sql)
                .bind(status.as_str())
                .bind(&now)
                .bind(&result)
                .bind(error.map(|e| e.0.as_str()))
                .bind(error.map(|e| e.1))
                .bind(id)
                .bind(worker)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// Cancels a queued job at once; returns whether it was queued.
    pub async fn cancel_queued_job(&self, id: &str) -> Result<bool, sqlx::Error> {
        let sql = "UPDATE jobs SET status = 'canceled', stage = 'canceled', finished_at = $1
                   WHERE id = $2 AND status = 'queued'";
        let now = super::now();
        let done = on_pool!(self, pool => sqlx::query(sql).bind(&now).bind(id).execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    /// Queued jobs of a dataset that is being deleted are canceled; running ones are asked to
    /// stop (their workers see it at the next heartbeat).
    pub async fn cancel_dataset_jobs(&self, dataset: &str) -> Result<(), sqlx::Error> {
        let sql = "UPDATE jobs SET status = 'canceled', stage = 'canceled', finished_at = $1,
                       error_code = $2, error_message = 'the dataset was deleted'
                   WHERE dataset = $3 AND status = 'queued'";
        let running = "UPDATE jobs SET cancel_requested = TRUE WHERE dataset = $1 AND status = 'running'";
        let now = super::now();
        on_pool!(self, pool => {
            sqlx::query(sql).bind(&now).bind(ErrorCode::DatasetDeleted.as_str()).bind(dataset).execute(pool).await?;
            sqlx::query(running).bind(dataset).execute(pool).await?;
        });
        Ok(())
    }
}
