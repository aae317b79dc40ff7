//! The database: sqlx queries, one file per table, over SQLite (the embedded default) or
//! PostgreSQL, each with its own schema under `migrations/{sqlite,postgres}/`.
//!
//! A `Db` is a cheap clone of a connection pool, shared by handlers and jobs. Every query is
//! written once with numbered placeholders (`$1`, which SQLite binds by number too) and runs on
//! whichever pool the URL chose ([`on_pool!`]); the two that must lock rows on PostgreSQL, where
//! several processes share the database, have a PostgreSQL form of their own. SQLite runs in WAL
//! mode so readers never wait for the ingest writer.
//!
//! The schemas keep what the API shows identical on both: timestamps and JSON are text,
//! text sorts by code point (`COLLATE "C"` on PostgreSQL, SQLite's `BINARY`). One difference
//! remains: a PostgreSQL identity skips the values of rolled-back or conflicting inserts, so
//! item `seq`s there can have gaps (they stay unique and increasing, which is all the index
//! needs).

pub mod datasets;
pub mod items;
pub mod jobs;
pub mod leases;
pub mod models;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Postgres, SqlitePool};

/// Connections per process, on either engine.
const MAX_CONNECTIONS: u32 = 8;

/// What a notification between processes ([`Db::notify`], [`Db::listen`]) is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A job was queued: idle workers look at the queue (the payload is its id).
    Jobs,
    /// A dataset, its items or its active model changed: every process brings its serving copy
    /// up to date (`sync`; the payload is the dataset's name).
    Changes,
}

impl Channel {
    fn name(self) -> &'static str {
        match self {
            Self::Jobs => "lookalike_jobs",
            Self::Changes => "lookalike_changes",
        }
    }
}

/// Which engine a [`Db`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Clone)]
pub struct Db {
    pool: Pool,
}

/// Runs `$body` with `$pool` bound to the concrete pool of `$db` (one arm per engine, so the
/// same query text compiles against each driver's types).
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match &$db.pool {
            $crate::db::Pool::Sqlite($pool) => $body,
            $crate::db::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

impl Db {
    /// Opens the database at `url` and applies pending migrations: a `sqlite:` URL (the file is
    /// created if missing) or a `postgres://` / `postgresql://` one (the database is created if
    /// the server lacks it).
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let shown = redact_url(url);
        match Self::backend_of(url)? {
            Backend::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)
                    .with_context(|| format!("invalid database url {shown:?}"))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10));
                let pool = SqlitePoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .connect_with(options)
                    .await
                    .with_context(|| format!("cannot open database {shown:?}"))?;
                sqlx::migrate!("./migrations/sqlite").run(&pool).await.context("database migration failed")?;
                Ok(Self { pool: Pool::Sqlite(pool) })
            }
            Backend::Postgres => {
                let options =
                    PgConnectOptions::from_str(url).with_context(|| format!("invalid database url {shown:?}"))?;
                if !Postgres::database_exists(url).await.with_context(|| format!("cannot reach {shown:?}"))? {
                    let created = Postgres::create_database(url).await;
                    // Processes starting together race to create it: the losers find it made.
                    if created.is_err() && !Postgres::database_exists(url).await.unwrap_or(false) {
                        created.with_context(|| format!("cannot create {shown:?}"))?;
                    }
                }
                let pool = PgPoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await
                    .with_context(|| format!("cannot open database {shown:?}"))?;
                // The migrator holds an advisory lock: processes starting together migrate once.
                sqlx::migrate!("./migrations/postgres").run(&pool).await.context("database migration failed")?;
                Ok(Self { pool: Pool::Postgres(pool) })
            }
        }
    }

    /// The engine a database URL names; anything but SQLite and PostgreSQL is an error.
    pub fn backend_of(url: &str) -> anyhow::Result<Backend> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            anyhow::bail!("database.url {:?}: use a sqlite: URL or a postgres:// (postgresql://) one", redact_url(url))
        }
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Tells the other processes sharing the database that something on `channel` changed
    /// (PostgreSQL `NOTIFY`, delivered when the current transaction commits; nothing on SQLite,
    /// whose file one process owns). A lost notification costs only latency: listeners also
    /// poll. So a failure to notify is logged, not returned: what changed is committed.
    pub async fn notify(&self, channel: Channel, payload: &str) {
        if let Pool::Postgres(pool) = &self.pool {
            let sent = sqlx::query("SELECT pg_notify($1, $2)").bind(channel.name()).bind(payload).execute(pool).await;
            if let Err(err) = sent {
                tracing::warn!(error = %err, channel = channel.name(), "could not notify the other processes");
            }
        }
    }

    /// Calls `on_notice` with the payload of every notification on `channel`, forever, from a
    /// connection of its own that reconnects when lost. On SQLite it returns at once.
    pub async fn listen(&self, channel: Channel, mut on_notice: impl FnMut(&str) + Send) {
        let Pool::Postgres(pool) = &self.pool else { return };
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(pool).await {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for notifications: retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(err) = listener.listen(channel.name()).await {
                tracing::warn!(error = %err, "cannot listen for notifications: retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            loop {
                match listener.recv().await {
                    Ok(notice) => on_notice(notice.payload()),
                    Err(err) => {
                        // `recv` reconnects on its next call; notices sent meanwhile are lost,
                        // so tell the caller to look for itself.
                        tracing::warn!(error = %err, "notification connection lost: reconnecting");
                        on_notice("");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }

    /// Closes every connection, waiting for those in use.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

/// The column reads the table modules need, on either engine's rows.
pub(crate) trait DbRow {
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn float(&self, column: &str) -> Result<f64, sqlx::Error>;
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error>;
}

macro_rules! db_row {
    ($row:ty) => {
        impl DbRow for $row {
            fn text(&self, column: &str) -> Result<String, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn float(&self, column: &str) -> Result<f64, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
        }
    };
}
db_row!(SqliteRow);
db_row!(PgRow);

/// A URL with its password replaced, fit for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}

/// Now, as the RFC 3339 text stored in the database and shown by the API.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
