//! Job leases: which worker runs a job, and taking a job back from a worker that is gone.
//!
//! Several processes may share one database (`server.role`): [`Db::start_next_job`] marks the
//! job with the taker's `server.instance` name and a heartbeat, the worker renews the heartbeat
//! ([`Db::heartbeat`], which also carries cancel requests made in other processes), and a job
//! whose heartbeat went stale is queued again or failed ([`Db::reclaim_jobs`]). Every write of
//! a job's end names its worker (`Db::finish_job`), so a worker that lost its lease cannot
//! overwrite what the job's new worker records.

use super::jobs::{Job, from_row};
use super::{Db, DbRow, on_pool};
use crate::error::ErrorCode;

/// When [`Db::reclaim_jobs`] deems a running job's worker gone: times as [`super::now`] writes
/// them (RFC 3339 strings of one width, so they compare as text).
#[derive(Debug, Clone, Copy)]
pub struct Stale<'a> {
    /// A heartbeat older than this is stale whoever wrote it.
    pub any: &'a str,
    /// This process's `server.instance` name...
    pub me: &'a str,
    /// ...and the older bound for jobs it ran: at start-up, those a previous life of this
    /// process left (a live namesake would have beaten since).
    pub mine: &'a str,
}

impl Db {
    /// Renews `worker`'s lease on the running job `id`. `Some(cancel)` while the lease holds
    /// (`cancel`: someone asked the job to stop); `None` when it is lost: the job ended, or it
    /// was taken back from this worker because its heartbeat went stale.
    pub async fn heartbeat(&self, id: &str, worker: &str) -> Result<Option<bool>, sqlx::Error> {
        let sql = "UPDATE jobs SET heartbeat_at = $1 WHERE id = $2 AND worker = $3 AND status = 'running'
                   RETURNING cancel_requested";
        let now = super::now();
        on_pool!(self, pool => {
            let row = sqlx::query(sql).bind(&now).bind(id).bind(worker).fetch_optional(pool).await?;
            row.as_ref().map(|row| row.flag("cancel_requested")).transpose()
        })
    }

    /// Asks the running job `id` to stop, wherever it runs: its worker sees the request at its
    /// next heartbeat. Returns whether the job was running.
    pub async fn request_cancel(&self, id: &str) -> Result<bool, sqlx::Error> {
        let sql = "UPDATE jobs SET cancel_requested = TRUE WHERE id = $1 AND status = 'running'";
        let done = on_pool!(self, pool => sqlx::query(sql).bind(id).execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    /// Running jobs whose worker is gone, taken back: those of the resumable kinds started
    /// fewer than `max_attempts` times are queued again (another worker resumes them from their
    /// checkpoints); the others are failed with a reason. A worker is gone when its heartbeat is
    /// older than `stale.any`, or, for jobs `stale.me` ran (this process before a restart),
    /// older than `stale.mine`. Each job is taken back by one caller only, however many ask at
    /// once. Returns the failed jobs and the requeued ones.
    pub async fn reclaim_jobs(
        &self,
        max_attempts: i64,
        stale: &Stale<'_>,
    ) -> Result<(Vec<Job>, Vec<Job>), sqlx::Error> {
        // The same condition selects and guards each update, so of two callers one wins.
        const GONE: &str = "status = 'running' AND (worker IS NULL OR heartbeat_at IS NULL OR heartbeat_at < $1
                            OR (worker = $2 AND heartbeat_at < $3))";
        let select = format!("SELECT * FROM jobs WHERE {GONE}");
        let running: Vec<Job> = on_pool!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(select))
                .bind(stale.any)
                .bind(stale.me)
                .bind(stale.mine)
                .fetch_all(pool)
                .await?;
            rows.iter().map(from_row).collect::<Result<_, _>>()?
        });
        let (mut failed, mut requeued) = (Vec::new(), Vec::new());
        for job in running {
            let resume = job.kind.is_resumable() && job.attempts < max_attempts;
            let message = if !job.kind.is_resumable() {
                "the worker running this job stopped; resuming is not supported for this kind".to_owned()
            } else {
                format!("the worker running this job stopped, {} times; it is not resumed again", job.attempts)
            };
            let done = if resume {
                let sql = format!(
                    "UPDATE jobs SET status = 'queued', stage = 'resuming', worker = NULL, heartbeat_at = NULL
                     WHERE id = $4 AND {GONE}"
                );
                on_pool!(self, pool => {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(stale.any)
                        .bind(stale.me)
                        .bind(stale.mine)
                        .bind(&job.id)
                        .execute(pool)
                        .await?
                        .rows_affected()
                })
            } else {
                let sql = format!(
                    "UPDATE jobs SET status = 'failed', stage = 'failed', finished_at = $5, error_code = $6,
                         error_message = $7 WHERE id = $4 AND {GONE}"
                );
                let now = super::now();
                on_pool!(self, pool => {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(stale.any)
                        .bind(stale.me)
                        .bind(stale.mine)
                        .bind(&job.id)
                        .bind(&now)
                        .bind(ErrorCode::Interrupted.as_str())
                        .bind(&message)
                        .execute(pool)
                        .await?
                        .rows_affected()
                })
            };
            if done == 1 {
                if resume { requeued.push(job) } else { failed.push(job) }
            }
        }
        Ok((failed, requeued))
    }
}
