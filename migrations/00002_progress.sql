-- +goose Up
-- Progress a running handler reports: a count towards a total and a message.
-- Kept on the record after the task ends, so watchers see where it stopped.
ALTER TABLE shadows.tasks
    ADD COLUMN progress_current bigint,
    ADD COLUMN progress_total   bigint,
    ADD COLUMN progress_message text,
    ADD COLUMN progress_at      timestamptz;

CREATE OR REPLACE VIEW shadows.executions AS
SELECT queue, key, task, args,
       CASE WHEN state = 'scheduled' AND run_at <= now() THEN 'queued'
            ELSE state::text END AS state,
       run_at AS "when", attempt, generation, deliveries > 1 AS redelivered,
       worker, cancel_requested, started_at, finished_at, error, result, created_at, expires_at,
       progress_current, progress_total, progress_message, progress_at
FROM shadows.tasks;

-- +goose Down
DROP VIEW IF EXISTS shadows.executions;
CREATE VIEW shadows.executions AS
SELECT queue, key, task, args,
       CASE WHEN state = 'scheduled' AND run_at <= now() THEN 'queued'
            ELSE state::text END AS state,
       run_at AS "when", attempt, generation, deliveries > 1 AS redelivered,
       worker, cancel_requested, started_at, finished_at, error, result, created_at, expires_at
FROM shadows.tasks;
ALTER TABLE shadows.tasks
    DROP COLUMN progress_current,
    DROP COLUMN progress_total,
    DROP COLUMN progress_message,
    DROP COLUMN progress_at;
