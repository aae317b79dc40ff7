//! The `items` table. `seq` is the id an item has in the vector index.

use serde::Serialize;

use super::{Db, DbRow, on_pool};

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

fn record(row: &impl DbRow) -> Result<ItemRecord, sqlx::Error> {
    Ok(ItemRecord {
        seq: row.int("seq")? as u64,
        item: Item {
            item_id: row.text("item_id")?,
            label: row.text("label")?,
            width: row.int("width")? as u32,
            height: row.int("height")? as u32,
            created_at: row.text("created_at")?,
        },
        content_type: row.text("content_type")?,
        blob: row.text("blob")?,
    })
}

const COLUMNS: &str = "seq, item_id, label, width, height, content_type, blob, created_at";

impl Db {
    /// Inserts items in one transaction and returns their `seq`s, in order.
    /// An `item_id` already present makes the whole call fail with
    /// `Err(Duplicate(id))` and stores nothing.
    pub async fn insert_items(&self, dataset: &str, items: &[NewItem]) -> Result<Vec<u64>, InsertError> {
        let sql = "INSERT INTO items (dataset, item_id, label, width, height, content_type, blob, created_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (dataset, item_id) DO NOTHING RETURNING seq";
        let now = super::now();
        let mut seqs = Vec::with_capacity(items.len());
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for item in items {
                let seq: Option<i64> = sqlx::query_scalar(sql)
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
                let Some(seq) = seq else {
                    return Err(InsertError::Duplicate(item.item_id.clone()));
                };
                seqs.push(seq as u64);
            }
            tx.commit().await?;
        });
        self.notify(super::Channel::Changes, dataset).await;
        Ok(seqs)
    }

    /// How many items the dataset has, and the highest `seq` among them (0 when none): enough
    /// for another process to tell cheaply whether its copy is behind.
    pub async fn item_stats(&self, dataset: &str) -> Result<(u64, u64), sqlx::Error> {
        let sql = "SELECT COUNT(*) AS n, COALESCE(MAX(seq), 0) AS top FROM items WHERE dataset = $1";
        on_pool!(self, pool => {
            let row = sqlx::query(sql).bind(dataset).fetch_one(pool).await?;
            Ok((row.int("n")? as u64, row.int("top")? as u64))
        })
    }

    pub async fn get_item(&self, dataset: &str, item_id: &str) -> Result<Option<ItemRecord>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM items WHERE dataset = $1 AND item_id = $2");
        on_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(dataset).bind(item_id).fetch_optional(pool).await?;
            row.as_ref().map(record).transpose()
        })
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
            "SELECT {COLUMNS} FROM items WHERE dataset = $1
               AND ($2 IS NULL OR label = $2) AND ($3 IS NULL OR item_id > $3)
             ORDER BY item_id LIMIT $4"
        );
        on_pool!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(dataset)
                .bind(label)
                .bind(after)
                .bind(limit as i64)
                .fetch_all(pool)
                .await?;
            rows.iter().map(record).collect()
        })
    }

    /// Every item of the dataset (for loading its in-memory catalogue).
    pub async fn all_items(&self, dataset: &str) -> Result<Vec<ItemRecord>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM items WHERE dataset = $1 ORDER BY seq");
        on_pool!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(dataset).fetch_all(pool).await?;
            rows.iter().map(record).collect()
        })
    }

    /// Deletes one item; returns it when it existed.
    pub async fn delete_item(&self, dataset: &str, item_id: &str) -> Result<Option<ItemRecord>, sqlx::Error> {
        let sql = format!("DELETE FROM items WHERE dataset = $1 AND item_id = $2 RETURNING {COLUMNS}");
        let deleted = on_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(dataset).bind(item_id).fetch_optional(pool).await?;
            row.as_ref().map(record).transpose()?
        });
        self.notify(super::Channel::Changes, dataset).await;
        Ok(deleted)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("item id {0:?} already exists")]
    Duplicate(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}
