//! The `models` table: a dataset's model generations and which one is active.
//!
//! Every dataset has a row for the pretrained backbone (parent NULL, no head)
//! and one per finetune job that produced a head. Exactly one row per dataset
//! is active, and `datasets.model` names it too (the `Dataset` JSON shows it);
//! `activate` changes both in one transaction.

use serde::Serialize;
use sqlx::Row;

use super::Db;
use crate::train::retrieval::Metrics;

/// A model generation as `GET /datasets/{name}/models` shows it, plus what
/// the server needs to load it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Model)]
pub struct ModelRecord {
    /// The pretrained backbone's id, or a trained model's.
    pub id: String,
    /// The model that was active when this one was trained; `null` for the pretrained backbone.
    pub parent: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Whether the dataset is served with this model (exactly one is).
    pub active: bool,
    /// Held-out metrics: a trained model's from its job (after), the parent's from the first job
    /// that measured it (before).
    pub eval: Option<Metrics>,
    /// The backbone whose features the model's head reads.
    pub backbone: String,
    /// Length of the model's embeddings.
    pub dim: i64,
    /// The finetune job that trained it; `None` for the pretrained backbone.
    pub job: Option<String>,
}

impl ModelRecord {
    /// The pretrained backbone on its own: no head to load.
    pub fn is_pretrained(&self) -> bool {
        self.id == self.backbone
    }
}

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<ModelRecord, sqlx::Error> {
    let eval: Option<String> = row.try_get("eval")?;
    let eval = eval
        .map(|text| serde_json::from_str::<Metrics>(&text))
        .transpose()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(ModelRecord {
        id: row.try_get("id")?,
        parent: row.try_get("parent")?,
        created_at: row.try_get("created_at")?,
        active: row.try_get::<i64, _>("active")? != 0,
        eval,
        backbone: row.try_get("backbone")?,
        dim: row.try_get("dim")?,
        job: row.try_get("job")?,
    })
}

/// A model to record.
pub struct NewModel<'a> {
    pub id: &'a str,
    pub parent: Option<&'a str>,
    pub backbone: &'a str,
    pub dim: usize,
    pub eval: Option<&'a Metrics>,
    pub job: Option<&'a str>,
}

impl Db {
    /// Records the pretrained backbone as a model of `dataset` if it is not
    /// yet, and makes it active when the dataset has no active model.
    pub async fn ensure_pretrained_model(&self, dataset: &str, backbone: &str, dim: usize) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO models (dataset, id, parent, created_at, active, eval, backbone, dim, job)
             VALUES (?, ?, NULL, ?, 0, NULL, ?, ?, NULL) ON CONFLICT (dataset, id) DO NOTHING",
        )
        .bind(dataset)
        .bind(backbone)
        .bind(super::now())
        .bind(backbone)
        .bind(dim as i64)
        .execute(&mut *tx)
        .await?;
        let active: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM models WHERE dataset = ? AND active = 1")
            .bind(dataset)
            .fetch_one(&mut *tx)
            .await?;
        if active == 0 {
            set_active(&mut tx, dataset, backbone).await?;
        }
        tx.commit().await
    }

    /// Records a trained model (inactive).
    pub async fn insert_model(&self, dataset: &str, model: &NewModel<'_>) -> Result<(), sqlx::Error> {
        let eval = model.eval.map(|m| serde_json::to_string(m).unwrap_or_default());
        sqlx::query(
            "INSERT INTO models (dataset, id, parent, created_at, active, eval, backbone, dim, job)
             VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?)",
        )
        .bind(dataset)
        .bind(model.id)
        .bind(model.parent)
        .bind(super::now())
        .bind(eval)
        .bind(model.backbone)
        .bind(model.dim as i64)
        .bind(model.job)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores the held-out metrics a model scored (the pretrained model's
    /// are learnt by the first finetune job that measures them).
    pub async fn set_model_eval(&self, dataset: &str, id: &str, eval: &Metrics) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE models SET eval = ? WHERE dataset = ? AND id = ? AND eval IS NULL")
            .bind(serde_json::to_string(eval).unwrap_or_default())
            .bind(dataset)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A dataset's models, oldest first.
    pub async fn list_models(&self, dataset: &str) -> Result<Vec<ModelRecord>, sqlx::Error> {
        let rows = sqlx::query("SELECT * FROM models WHERE dataset = ? ORDER BY created_at, rowid")
            .bind(dataset)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn get_model(&self, dataset: &str, id: &str) -> Result<Option<ModelRecord>, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM models WHERE dataset = ? AND id = ?")
            .bind(dataset)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The dataset's active model, if it has one.
    pub async fn active_model(&self, dataset: &str) -> Result<Option<ModelRecord>, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM models WHERE dataset = ? AND active = 1")
            .bind(dataset)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Makes `id` the dataset's active model (and `datasets.model`), atomically.
    pub async fn activate_model(&self, dataset: &str, id: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        set_active(&mut tx, dataset, id).await?;
        tx.commit().await
    }
}

async fn set_active(tx: &mut sqlx::SqliteConnection, dataset: &str, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE models SET active = (id = ?) WHERE dataset = ?")
        .bind(id)
        .bind(dataset)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE datasets SET model = ? WHERE name = ?").bind(id).bind(dataset).execute(&mut *tx).await?;
    Ok(())
}
