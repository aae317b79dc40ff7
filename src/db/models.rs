//! The `models` table: a dataset's model generations and which one is active.
//!
//! Every dataset has a row for the pretrained backbone (parent NULL, no head)
//! and one per finetune job that produced a head. Exactly one row per dataset
//! is active, and `datasets.model` names it too (the `Dataset` JSON shows it);
//! `activate` changes both in one transaction.

use serde::Serialize;

use super::{Db, DbRow, on_pool};
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

fn from_row(row: &impl DbRow) -> Result<ModelRecord, sqlx::Error> {
    let eval = row
        .opt_text("eval")?
        .map(|text| serde_json::from_str::<Metrics>(&text))
        .transpose()
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(ModelRecord {
        id: row.text("id")?,
        parent: row.opt_text("parent")?,
        created_at: row.text("created_at")?,
        active: row.flag("active")?,
        eval,
        backbone: row.text("backbone")?,
        dim: row.int("dim")?,
        job: row.opt_text("job")?,
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

/// Makes `$id` the active model of `$dataset` (and `datasets.model`) inside the transaction
/// `$tx`, on either engine.
macro_rules! set_active {
    ($tx:expr, $dataset:expr, $id:expr) => {{
        sqlx::query("UPDATE models SET active = (id = $1) WHERE dataset = $2")
            .bind($id)
            .bind($dataset)
            .execute(&mut *$tx)
            .await?;
        sqlx::query("UPDATE datasets SET model = $1 WHERE name = $2")
            .bind($id)
            .bind($dataset)
            .execute(&mut *$tx)
            .await?;
    }};
}

impl Db {
    /// Records the pretrained backbone as a model of `dataset` if it is not
    /// yet, and makes it active when the dataset has no active model.
    pub async fn ensure_pretrained_model(&self, dataset: &str, backbone: &str, dim: usize) -> Result<(), sqlx::Error> {
        let insert = "INSERT INTO models (dataset, id, parent, created_at, active, eval, backbone, dim, job)
                      VALUES ($1, $2, NULL, $3, FALSE, NULL, $2, $4, NULL) ON CONFLICT (dataset, id) DO NOTHING";
        let count = "SELECT COUNT(*) FROM models WHERE dataset = $1 AND active = TRUE";
        let now = super::now();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(insert).bind(dataset).bind(backbone).bind(&now).bind(dim as i64).execute(&mut *tx).await?;
            let active: i64 = sqlx::query_scalar(count).bind(dataset).fetch_one(&mut *tx).await?;
            if active == 0 {
                set_active!(tx, dataset, backbone);
            }
            tx.commit().await
        })
    }

    /// Records a trained model (inactive).
    pub async fn insert_model(&self, dataset: &str, model: &NewModel<'_>) -> Result<(), sqlx::Error> {
        let sql = "INSERT INTO models (dataset, id, parent, created_at, active, eval, backbone, dim, job)
                   VALUES ($1, $2, $3, $4, FALSE, $5, $6, $7, $8)";
        let eval = model.eval.map(|m| serde_json::to_string(m).unwrap_or_default());
        let now = super::now();
        on_pool!(self, pool => {
            sqlx::query(sql)
                .bind(dataset)
                .bind(model.id)
                .bind(model.parent)
                .bind(&now)
                .bind(&eval)
                .bind(model.backbone)
                .bind(model.dim as i64)
                .bind(model.job)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Stores the held-out metrics a model scored (the pretrained model's
    /// are learnt by the first finetune job that measures them).
    pub async fn set_model_eval(&self, dataset: &str, id: &str, eval: &Metrics) -> Result<(), sqlx::Error> {
        let sql = "UPDATE models SET eval = $1 WHERE dataset = $2 AND id = $3 AND eval IS NULL";
        let eval = serde_json::to_string(eval).unwrap_or_default();
        on_pool!(self, pool => {
            sqlx::query(sql).bind(&eval).bind(dataset).bind(id).execute(pool).await?;
        });
        Ok(())
    }

    /// A dataset's models, oldest first.
    pub async fn list_models(&self, dataset: &str) -> Result<Vec<ModelRecord>, sqlx::Error> {
        let sql = "SELECT * FROM models WHERE dataset = $1 ORDER BY created_at, rowid";
        on_pool!(self, pool => {
            let rows = sqlx::query(sql).bind(dataset).fetch_all(pool).await?;
            rows.iter().map(from_row).collect()
        })
    }

    pub async fn get_model(&self, dataset: &str, id: &str) -> Result<Option<ModelRecord>, sqlx::Error> {
        let sql = "SELECT * FROM models WHERE dataset = $1 AND id = $2";
        on_pool!(self, pool => {
            let row = sqlx::query(sql).bind(dataset).bind(id).fetch_optional(pool).await?;
            row.as_ref().map(from_row).transpose()
        })
    }

    /// The dataset's active model, if it has one.
    pub async fn active_model(&self, dataset: &str) -> Result<Option<ModelRecord>, sqlx::Error> {
        let sql = "SELECT * FROM models WHERE dataset = $1 AND active = TRUE";
        on_pool!(self, pool => {
            let row = sqlx::query(sql).bind(dataset).fetch_optional(pool).await?;
            row.as_ref().map(from_row).transpose()
        })
    }

    /// Makes `id` the dataset's active model (and `datasets.model`), atomically.
    pub async fn activate_model(&self, dataset: &str, id: &str) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            set_active!(tx, dataset, id);
            tx.commit().await?;
        });
        self.notify(super::Channel::Changes, dataset).await;
        Ok(())
    }
}
