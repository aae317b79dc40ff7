-- Fine-tuning: what a running job is doing, how often it was started, and
-- what each model generation is.

-- JSON: the current stage's figures (epoch, step, steps, loss, ...), shown as `detail`.
ALTER TABLE jobs ADD COLUMN detail TEXT;
-- How many times the job was started; an interrupted job is resumed while this is small.
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;

-- The backbone whose features a model's head reads (its own id for the pretrained model).
ALTER TABLE models ADD COLUMN backbone TEXT NOT NULL DEFAULT '';
-- Length of the model's embeddings.
ALTER TABLE models ADD COLUMN dim INTEGER NOT NULL DEFAULT 0;
-- The finetune job that trained it (NULL for the pretrained model).
ALTER TABLE models ADD COLUMN job TEXT;
