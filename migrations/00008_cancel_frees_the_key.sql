-- +goose Up
-- A cancel ends a running task at once as far as users see it, as docket
-- does: its record reads cancelled and its key can be added again, while
-- the row stays running (lease, concurrency slots) until its worker records
-- how the handler really ended. The view shows such a run as cancelled.
CREATE OR REPLACE VIEW shadows.executions AS
SELECT queue, key, task, args,
       CASE WHEN state = 'scheduled' AND run_at <= now() THEN 'queued'
            WHEN state = 'running' AND cancel_requested THEN 'cancelled'
            ELSE state::text END AS state,
       run_at AS "when", attempt, generation, deliveries > 1 AS redelivered,
       worker, cancel_requested, started_at, finished_at, error, result, created_at, expires_at,
       progress_current, progress_total, progress_message, progress_at, held
FROM shadows.tasks;

-- +goose Down
CREATE OR REPLACE VIEW shadows.executions AS
SELECT queue, key, task, args,
       CASE WHEN state = 'scheduled' AND run_at <= now() THEN 'queued'
            ELSE state::text END AS state,
       run_at AS "when", attempt, generation, deliveries > 1 AS redelivered,
       worker, cancel_requested, started_at, finished_at, error, result, created_at, expires_at,
       progress_current, progress_total, progress_message, progress_at, held
FROM shadows.tasks;
