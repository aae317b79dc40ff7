-- Datasets, their items, background jobs and model generations.
-- Timestamps are RFC 3339 text; JSON columns hold serialised JSON text.

CREATE TABLE datasets (
    name        TEXT PRIMARY KEY NOT NULL,
    status      TEXT NOT NULL,             -- ingesting | ready | failed
    model       TEXT,                      -- active model id
    created_at  TEXT NOT NULL
);

-- `seq` is the item's id inside the vector index: stable, never reused.
CREATE TABLE items (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset       TEXT NOT NULL REFERENCES datasets(name) ON DELETE CASCADE,
    item_id       TEXT NOT NULL,
    label         TEXT NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    content_type  TEXT NOT NULL,
    blob          TEXT NOT NULL,           -- storage key of the original bytes
    created_at    TEXT NOT NULL,
    UNIQUE (dataset, item_id)
);
CREATE INDEX items_by_label ON items (dataset, label, item_id);

CREATE TABLE jobs (
    id             TEXT PRIMARY KEY NOT NULL,
    kind           TEXT NOT NULL,          -- ingest | finetune | reindex
    dataset        TEXT NOT NULL,
    status         TEXT NOT NULL,          -- queued | running | succeeded | failed | canceled
    stage          TEXT NOT NULL,
    progress       REAL NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    started_at     TEXT,
    finished_at    TEXT,
    error_code     TEXT,
    error_message  TEXT,
    params         TEXT NOT NULL,          -- JSON
    result         TEXT,                   -- JSON
    artifacts      TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX jobs_by_created ON jobs (created_at);

CREATE TABLE models (
    dataset     TEXT NOT NULL REFERENCES datasets(name) ON DELETE CASCADE,
    id          TEXT NOT NULL,
    parent      TEXT,
    created_at  TEXT NOT NULL,
    active      INTEGER NOT NULL DEFAULT 0,
    eval        TEXT,                      -- JSON Metrics
    PRIMARY KEY (dataset, id)
);
