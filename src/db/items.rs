//! The `items` table. `seq` is the id an item has in the vector index.

use serde::Serialize;
use sqlx::Row;

use super::Db;

/// An item as the API shows it (`API.md`: `Item`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Item {
    #[schema(min_length = 1, max_length = 256, example = "sneaker/0042")]
    pub item_id: String,
    #[schema(min_length = 1, max_length = 256, example = "sneaker")]
    pub label: String,
    /// Width of the original image, in pixels.
    pub width: u32,
    /// Height of the original image, in pixels.
    pub height: u32,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// A stored item with what the server needs beyond the API fields.
#[derive(Debug, Clone)]
pub struct ItemRecord {
    pub seq: u64,
    pub item: Item,
    pub content_type: String,
    pub blob: String,
}

/// An item about to be stored (its bytes already durable under `blob`).
#[derive(Debug, Clone)]
pub struct NewItem {
    pub item_id: String,
    pub label: String,
    pub width: u32,
    pub height: u32,
    pub content_type: String,
    pub blob: String,
}

fn record(row: &sqlx::sqlite::SqliteRow) -> Result<ItemRecord, sqlx::Error> {
    let seq: i64 = row.try_get("seq")?;
    let width: i64 = row.try_get("width")?;
    let height: i64 = row.try_get("height")?;
    Ok(ItemRecord {
        seq: seq as u64,
        item: Item {
            item_id: row.try_get("item_id")?,
            label: row.try_get("label")?,
            width: width as u32,
            height: height as u32,
            created_at: row.try_get("created_at")?,
        },
        content_type: row.try_get("content_type")?,
        blob: row.try_get("blob")?,
    })
}

const COLUMNS: &str = "seq, item_id, label, width, height, content_type, blob, created_at";

impl Db {
    /// Inserts items in one transaction and returns their `seq`s, in order.
    /// An `item_id` already present makes the whole call fail with
    /// `Err(Duplicate(id))` and stores nothing.
    pub async fn insert_items(&self, dataset: &str, items: &[NewItem]) -> Result<Vec<u64>, InsertError> {
        let mut tx = self.pool.begin().await?;
        let now = super::now();
        let mut seqs = Vec::with_capacity(items.len());
        for item in items {
            let row = sqlx::query(
                "INSERT INTO items (dataset, item_id, label, width, height, content_type, blob, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dataset, item_id) DO NOTHING RETURNING seq",
            )
            .bind(dataset)
            .bind(&item.item_id)
            .bind(&item.label)
            .bind(item.width as i64)
            .bind(item.height as i64)
            .bind(&item.content_type)
            .bind(&item.blob)
            .bind(&now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Err(InsertError::Duplicate(item.item_id.clone()));
            };
            let seq: i64 = row.try_get("seq")?;
            seqs.push(seq as u64);
        }
        tx.commit().await?;
        Ok(seqs)
    }

    pub async fn get_item(&self, dataset: &str, item_id: &str) -> Result<Option<ItemRecord>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM items WHERE dataset = ? AND item_id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(dataset).bind(item_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(record).transpose()
    }

    /// A page of items ordered by `item_id`, strictly after `after` when given.
    pub async fn list_items(
        &self,
        dataset: &str,
        label: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ItemRecord>, sqlx::Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM items WHERE dataset = ?
               AND (? IS NULL OR label = ?) AND (? IS NULL OR item_id > ?)
             ORDER BY item_id LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(dataset)
            .bind(label)
            .bind(label)
            .bind(after)
            .bind(after)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record).collect()
    }

    /// Every item of the dataset (for loading its in-memory catalogue).
    pub async fn all_items(&self, dataset: &str) -> Result<Vec<ItemRecord>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM items WHERE dataset = ? ORDER BY seq");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(dataset).fetch_all(&self.pool).await?;
        rows.iter().map(record).collect()
    }

    /// Deletes one item; returns it when it existed.
    pub async fn delete_item(&self, dataset: &str, item_id: &str) -> Result<Option<ItemRecord>, sqlx::Error> {
        let sql = format!("DELETE FROM items WHERE dataset = ? AND item_id = ? RETURNING {COLUMNS}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(dataset).bind(item_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(record).transpose()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("item id {0:?} already exists")]
    Duplicate(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}
