-- Job leases: several workers may share one database. The worker running a
-- job writes its name and a heartbeat; a job whose heartbeat is stale has lost
-- its worker and is taken back (resumed or failed). A cancel asked of a running
-- job is written down, so the worker that runs it sees it at its next heartbeat.

-- The `server.instance` name of the process running the job (NULL while queued).
ALTER TABLE jobs ADD COLUMN worker TEXT;
-- When that worker last said it was alive (RFC 3339, UTC, like the other times).
ALTER TABLE jobs ADD COLUMN heartbeat_at TEXT;
-- Set by `POST /jobs/{id}/cancel` on a running job: its worker stops it.
ALTER TABLE jobs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE;
