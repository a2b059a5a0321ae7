-- +goose Up
-- Strikes disable tasks by name and by argument value. Postgres evaluates
-- them, when tasks are added and when they are claimed, so every producer
-- and worker agrees the moment a strike commits.
CREATE TABLE shadows.strikes (
    id         bigserial   PRIMARY KEY,
    queue      text        NOT NULL,
    -- The task name the strike applies to; NULL for every task.
    task       text,
    -- The rule's conditions as a strict SQL/JSON path filter over the
    -- task's arguments, e.g. strict $ ? (@."amount".type() == "number" &&
    -- @."amount" > 1000): numbers compare as numbers, strings as strings,
    -- and a parameter that is absent or of another type never matches. A
    -- rule without conditions is "strict $", which matches every task.
    path       jsonpath    NOT NULL,
    -- A hold keeps matching tasks waiting instead of cancelling them.
    hold       boolean     NOT NULL DEFAULT false,
    -- The rule's canonical text form: what Strike and Restore match on.
    rule       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (queue, rule)
);

-- Every change to a queue's strikes bumps its epoch. A task records the
-- epoch it was judged at when it was added; a claim judges again only tasks
-- whose epoch is not the current one, so strikes cost claims nothing until
-- they change.
CREATE TABLE shadows.strike_epochs (
    queue text   PRIMARY KEY,
    epoch bigint NOT NULL
);

-- Tasks a hold strike keeps waiting leave the claim index, so they cost
-- claims nothing; restoring the strike releases them.
ALTER TABLE shadows.tasks
    ADD COLUMN held boolean NOT NULL DEFAULT false,
    ADD COLUMN strike_epoch bigint NOT NULL DEFAULT 0;
CREATE INDEX tasks_ready ON shadows.tasks (queue, run_at, seq) WHERE state = 'scheduled' AND NOT held;
DROP INDEX shadows.tasks_due;

CREATE OR REPLACE VIEW shadows.executions AS
SELECT queue, key, task, args,
       CASE WHEN state = 'scheduled' AND run_at <= now() THEN 'queued'
            ELSE state::text END AS state,
       run_at AS "when", attempt, generation, deliveries > 1 AS redelivered,
       worker, cancel_requested, started_at, finished_at, error, result, created_at, expires_at,
       progress_current, progress_total, progress_message, progress_at, held
FROM shadows.tasks;

-- +goose Down
DROP VIEW IF EXISTS shadows.executions;
CREATE VIEW shadows.executions AS
SELECT queue, key, task, args,
       CASE WHEN state = 'scheduled' AND run_at <= now() THEN 'queued'
            ELSE state::text END AS state,
       run_at AS "when", attempt, generation, deliveries > 1 AS redelivered,
       worker, cancel_requested, started_at, finished_at, error, result, created_at, expires_at,
       progress_current, progress_total, progress_message, progress_at
FROM shadows.tasks;
CREATE INDEX tasks_due ON shadows.tasks (queue, run_at, seq) WHERE state = 'scheduled';
DROP INDEX shadows.tasks_ready;
ALTER TABLE shadows.tasks DROP COLUMN held, DROP COLUMN strike_epoch;
DROP TABLE shadows.strike_epochs;
DROP TABLE shadows.strikes;
