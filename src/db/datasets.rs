//! The `datasets` table.

use serde::Serialize;

use super::{Db, DbRow, on_pool};

/// A dataset as the API shows it (`API.md`: `Dataset`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Dataset {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", min_length = 1, max_length = 64, example = "shoes")]
    pub name: String,
    /// `ingesting` while its ingest job runs, then `ready` (or `failed`).
    #[schema(example = "ready")]
    pub status: String,
    #[schema(minimum = 0)]
    pub items: i64,
    /// Distinct labels.
    #[schema(minimum = 0)]
    pub labels: i64,
    /// The active model id.
    pub model: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
}

pub const STATUS_INGESTING: &str = "ingesting";
pub const STATUS_READY: &str = "ready";
pub const STATUS_FAILED: &str = "failed";

const SELECT: &str = "SELECT d.name, d.status, d.model, d.created_at,
        (SELECT COUNT(*) FROM items i WHERE i.dataset = d.name) AS items,
        (SELECT COUNT(DISTINCT label) FROM items i WHERE i.dataset = d.name) AS labels
    FROM datasets d";

fn from_row(row: &impl DbRow) -> Result<Dataset, sqlx::Error> {
    Ok(Dataset {
        name: row.text("name")?,
        status: row.text("status")?,
        items: row.int("items")?,
        labels: row.int("labels")?,
        model: row.opt_text("model")?,
        created_at: row.text("created_at")?,
    })
}

impl Db {
    /// Inserts a new dataset; `Ok(false)` when the name is taken.
    pub async fn insert_dataset(&self, name: &str, status: &str, model: &str) -> Result<bool, sqlx::Error> {
        let sql = "INSERT INTO datasets (name, status, model, created_at) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (name) DO NOTHING";
        let now = super::now();
        let done = on_pool!(self, pool => {
            sqlx::query(sql).bind(name).bind(status).bind(model).bind(&now).execute(pool).await?.rows_affected()
        });
        self.notify(super::Channel::Changes, name).await;
        Ok(done == 1)
    }

    pub async fn get_dataset(&self, name: &str) -> Result<Option<Dataset>, sqlx::Error> {
        let sql = format!("{SELECT} WHERE d.name = $1");
        on_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(name).fetch_optional(pool).await?;
            row.as_ref().map(from_row).transpose()
        })
    }

    pub async fn list_datasets(&self) -> Result<Vec<Dataset>, sqlx::Error> {
        let sql = format!("{SELECT} ORDER BY d.name");
        on_pool!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?;
            rows.iter().map(from_row).collect()
        })
    }

    pub async fn set_dataset_status(&self, name: &str, status: &str) -> Result<(), sqlx::Error> {
        let sql = "UPDATE datasets SET status = $1 WHERE name = $2";
        on_pool!(self, pool => {
            sqlx::query(sql).bind(status).bind(name).execute(pool).await?;
        });
        Ok(())
    }

    /// Deletes the dataset and, by cascade, its items and models. `Ok(false)` if absent.
    pub async fn delete_dataset(&self, name: &str) -> Result<bool, sqlx::Error> {
        let sql = "DELETE FROM datasets WHERE name = $1";
        let done = on_pool!(self, pool => sqlx::query(sql).bind(name).execute(pool).await?.rows_affected());
        self.notify(super::Channel::Changes, name).await;
        Ok(done == 1)
    }

    /// Item counts per label, sorted by label.
    pub async fn label_counts(&self, name: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let sql = "SELECT label, COUNT(*) AS n FROM items WHERE dataset = $1 GROUP BY label ORDER BY label";
        on_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(name).fetch_all(pool).await?;
            rows.iter().map(|r| Ok((r.text("label")?, r.int("n")?))).collect()
        })
    }
}
