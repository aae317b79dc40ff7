//! The `jobs` table: the persisted job queue (meilisearch's task model).

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use super::Db;

/// A job as the API shows it (`API.md`: `Job`).
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub dataset: String,
    pub status: String,
    pub stage: String,
    pub progress: f64,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<JobError>,
    pub params: Value,
    pub result: Option<Value>,
    pub artifacts: Vec<String>,
    /// The current stage's figures (a finetune job's epoch, step and loss, ...); `null` when none.
    pub detail: Option<Value>,
    /// How many times the job was started (more than once when it was resumed after a restart).
    pub attempts: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

pub const QUEUED: &str = "queued";
pub const RUNNING: &str = "running";
pub const SUCCEEDED: &str = "succeeded";
pub const FAILED: &str = "failed";
pub const CANCELED: &str = "canceled";

/// Filters of `GET /jobs`.
#[derive(Debug, Default)]
pub struct JobFilter<'a> {
    pub dataset: Option<&'a str>,
    pub status: Option<&'a str>,
    pub kind: Option<&'a str>,
}

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Job, sqlx::Error> {
    let json = |column: &str| -> Result<Option<Value>, sqlx::Error> {
        let text: Option<String> = row.try_get(column)?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| sqlx::Error::Decode(Box::new(e)))).transpose()
    };
    let code: Option<String> = row.try_get("error_code")?;
    let message: Option<String> = row.try_get("error_message")?;
    let artifacts = json("artifacts")?.and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
    Ok(Job {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        dataset: row.try_get("dataset")?,
        status: row.try_get("status")?,
        stage: row.try_get("stage")?,
        progress: row.try_get("progress")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        error: code.map(|code| JobError { code, message: message.unwrap_or_default() }),
        params: json("params")?.unwrap_or(Value::Null),
        result: json("result")?,
        artifacts,
        detail: json("detail")?,
        attempts: row.try_get("attempts")?,
    })
}

impl Db {
    pub async fn insert_job(&self, id: &str, kind: &str, dataset: &str, params: &Value) -> Result<Job, sqlx::Error> {
        sqlx::query(
            "INSERT INTO jobs (id, kind, dataset, status, stage, progress, created_at, params)
             VALUES (?, ?, ?, 'queued', 'queued', 0, ?, ?)",
        )
        .bind(id)
        .bind(kind)
        .bind(dataset)
        .bind(super::now())
        .bind(params.to_string())
        .execute(&self.pool)
        .await?;
        self.get_job(id).await?.ok_or(sqlx::Error::RowNotFound)
    }

    pub async fn get_job(&self, id: &str) -> Result<Option<Job>, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM jobs WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Jobs matching the filter, newest first.
    pub async fn list_jobs(&self, filter: &JobFilter<'_>, limit: usize) -> Result<Vec<Job>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE (? IS NULL OR dataset = ?) AND (? IS NULL OR status = ?) AND (? IS NULL OR kind = ?)
             ORDER BY created_at DESC, rowid DESC LIMIT ?",
        )
        .bind(filter.dataset)
        .bind(filter.dataset)
        .bind(filter.status)
        .bind(filter.status)
        .bind(filter.kind)
        .bind(filter.kind)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// The oldest queued job, marked running (one scheduler calls this).
    pub async fn start_next_job(&self) -> Result<Option<Job>, sqlx::Error> {
        let row = sqlx::query(
            "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?), stage = 'starting',
                attempts = attempts + 1
             WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, rowid LIMIT 1)
             RETURNING *",
        )
        .bind(super::now())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    pub async fn set_job_progress(&self, id: &str, stage: &str, progress: f64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE jobs SET stage = ?, progress = ? WHERE id = ? AND status = 'running'")
            .bind(stage)
            .bind(progress.clamp(0.0, 1.0))
            .bind(id)
            .execute(&self.pool)
            .await?;
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
        sqlx::query("UPDATE jobs SET stage = ?, progress = ?, detail = ? WHERE id = ? AND status = 'running'")
            .bind(stage)
            .bind(progress.clamp(0.0, 1.0))
            .bind(detail.to_string())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Lists a file the job wrote under its artifacts folder.
    pub async fn add_job_artifact(&self, id: &str, file: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let text: String =
            sqlx::query_scalar("SELECT artifacts FROM jobs WHERE id = ?").bind(id).fetch_one(&mut *tx).await?;
        let mut files: Vec<String> = serde_json::from_str(&text).unwrap_or_default();
        if !files.iter().any(|f| f == file) {
            files.push(file.to_owned());
        }
        sqlx::query("UPDATE jobs SET artifacts = ? WHERE id = ?")
            .bind(serde_json::to_string(&files).unwrap_or_else(|_| "[]".into()))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Ends a job: `status` is succeeded, failed or canceled.
    pub async fn finish_job(
        &self,
        id: &str,
        status: &str,
        result: Option<&Value>,
        error: Option<(&str, &str)>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE jobs SET status = ?, stage = ?, finished_at = ?, result = ?, error_code = ?, error_message = ?,
                progress = CASE WHEN ? = 'succeeded' THEN 1.0 ELSE progress END
             WHERE id = ?",
        )
        .bind(status)
        .bind(status)
        .bind(super::now())
        .bind(result.map(Value::to_string))
        .bind(error.map(|e| e.0))
        .bind(error.map(|e| e.1))
        .bind(status)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Cancels a queued job at once; returns whether it was queued.
    pub async fn cancel_queued_job(&self, id: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'canceled', stage = 'canceled', finished_at = ? WHERE id = ? AND status = 'queued'",
        )
        .bind(super::now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// At start-up: jobs left running by a stopped process. Those of the
    /// `resumable` kinds started fewer than `max_attempts` times are queued
    /// again (they resume from their checkpoints); the others are failed with
    /// a reason. Returns the failed jobs and the requeued ones.
    pub async fn recover_interrupted_jobs(
        &self,
        resumable: &[&str],
        max_attempts: i64,
    ) -> Result<(Vec<Job>, Vec<Job>), sqlx::Error> {
        let running: Vec<Job> = sqlx::query("SELECT * FROM jobs WHERE status = 'running'")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(from_row)
            .collect::<Result<_, _>>()?;
        let (mut failed, mut requeued) = (Vec::new(), Vec::new());
        for job in running {
            if resumable.contains(&job.kind.as_str()) && job.attempts < max_attempts {
                sqlx::query("UPDATE jobs SET status = 'queued', stage = 'resuming' WHERE id = ?")
                    .bind(&job.id)
                    .execute(&self.pool)
                    .await?;
                requeued.push(job);
            } else {
                let message = if resumable.contains(&job.kind.as_str()) {
                    format!(
                        "the server stopped while this job was running, {} times; it is not resumed again",
                        job.attempts
                    )
                } else {
                    "the server stopped while this job was running; resuming is not supported for this kind".to_owned()
                };
                sqlx::query(
                    "UPDATE jobs SET status = 'failed', stage = 'failed', finished_at = ?, error_code = 'interrupted',
                        error_message = ? WHERE id = ?",
                )
                .bind(super::now())
                .bind(message)
                .bind(&job.id)
                .execute(&self.pool)
                .await?;
                failed.push(job);
            }
        }
        Ok((failed, requeued))
    }

    /// Queued jobs of a dataset that is being deleted are canceled.
    pub async fn cancel_dataset_jobs(&self, dataset: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE jobs SET status = 'canceled', stage = 'canceled', finished_at = ?,
                error_code = 'dataset_deleted', error_message = 'the dataset was deleted'
             WHERE dataset = ? AND status = 'queued'",
        )
        .bind(super::now())
        .bind(dataset)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
