//! The `datasets` table.

use serde::Serialize;
use sqlx::Row;

use super::Db;

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

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Dataset, sqlx::Error> {
    Ok(Dataset {
        name: row.try_get("name")?,
        status: row.try_get("status")?,
        items: row.try_get("items")?,
        labels: row.try_get("labels")?,
        model: row.try_get("model")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Db {
    /// Inserts a new dataset; `Ok(false)` when the name is taken.
    pub async fn insert_dataset(&self, name: &str, status: &str, model: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO datasets (name, status, model, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(status)
        .bind(model)
        .bind(super::now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn get_dataset(&self, name: &str) -> Result<Option<Dataset>, sqlx::Error> {
        let sql = format!("{SELECT} WHERE d.name = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(from_row).transpose()
    }

    pub async fn list_datasets(&self) -> Result<Vec<Dataset>, sqlx::Error> {
        let sql = format!("{SELECT} ORDER BY d.name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn set_dataset_status(&self, name: &str, status: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE datasets SET status = ? WHERE name = ?")
            .bind(status)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes the dataset and, by cascade, its items and models. `Ok(false)` if absent.
    pub async fn delete_dataset(&self, name: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM datasets WHERE name = ?").bind(name).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Item counts per label, sorted by label.
    pub async fn label_counts(&self, name: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let rows =
            sqlx::query("SELECT label, COUNT(*) AS n FROM items WHERE dataset = ? GROUP BY label ORDER BY label")
                .bind(name)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| Ok((r.try_get("label")?, r.try_get("n")?))).collect()
    }
}
