-- +goose Up
-- Strikes disable tasks by name and by argument value. Postgres evaluates
-- them, when tasks are added and when they are claimed, so every producer
-- and worker agrees the moment a strike commits.
CREATE TABLE shadows.strikes (
    id         bigserial   PRIMARY KEY,
    queue      text        NOT NULL,
    -- The task name the strike applies to; NULL for every task.
    task       text,
    -- Conditions that must all hold: [{"param": …, "op": …, "value": …}].
    -- An empty list strikes the task whole.
    conditions jsonb       NOT NULL DEFAULT '[]',
    -- A hold keeps matching tasks waiting instead of cancelling them.
    hold       boolean     NOT NULL DEFAULT false,
    -- The rule's canonical text form: what Strike and Restore match on.
    rule       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (queue, rule)
);

-- Whether one condition holds for a task's arguments. Numbers compare as
-- numbers and strings as strings (byte order); booleans, null, arrays and
-- objects only with == and !=. A parameter the arguments lack, or a value of
-- another JSON type, never matches.
-- +goose StatementBegin
CREATE FUNCTION shadows.condition_holds(args jsonb, cond jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
    WHEN NOT (args ? (cond->>'param')) THEN false
    WHEN cond->>'op' = 'between' THEN
        CASE
            WHEN jsonb_typeof(args->(cond->>'param')) = 'number'
                 AND jsonb_typeof(cond->'value'->0) = 'number' AND jsonb_typeof(cond->'value'->1) = 'number'
            THEN (args->>(cond->>'param'))::numeric
                 BETWEEN (cond->'value'->>0)::numeric AND (cond->'value'->>1)::numeric
            WHEN jsonb_typeof(args->(cond->>'param')) = 'string'
                 AND jsonb_typeof(cond->'value'->0) = 'string' AND jsonb_typeof(cond->'value'->1) = 'string'
            THEN ((args->>(cond->>'param')) COLLATE "C")
                 BETWEEN ((cond->'value'->>0) COLLATE "C") AND ((cond->'value'->>1) COLLATE "C")
            ELSE false
        END
    WHEN jsonb_typeof(args->(cond->>'param')) <> jsonb_typeof(cond->'value') THEN false
    WHEN jsonb_typeof(cond->'value') = 'number' THEN
        CASE cond->>'op'
            WHEN '==' THEN (args->>(cond->>'param'))::numeric =  (cond->>'value')::numeric
            WHEN '!=' THEN (args->>(cond->>'param'))::numeric <> (cond->>'value')::numeric
            WHEN '<'  THEN (args->>(cond->>'param'))::numeric <  (cond->>'value')::numeric
            WHEN '<=' THEN (args->>(cond->>'param'))::numeric <= (cond->>'value')::numeric
            WHEN '>'  THEN (args->>(cond->>'param'))::numeric >  (cond->>'value')::numeric
            WHEN '>=' THEN (args->>(cond->>'param'))::numeric >= (cond->>'value')::numeric
            ELSE false
        END
    WHEN jsonb_typeof(cond->'value') = 'string' THEN
        CASE cond->>'op'
            WHEN '==' THEN (args->>(cond->>'param')) COLLATE "C" =  (cond->>'value') COLLATE "C"
            WHEN '!=' THEN (args->>(cond->>'param')) COLLATE "C" <> (cond->>'value') COLLATE "C"
            WHEN '<'  THEN (args->>(cond->>'param')) COLLATE "C" <  (cond->>'value') COLLATE "C"
            WHEN '<=' THEN (args->>(cond->>'param')) COLLATE "C" <= (cond->>'value') COLLATE "C"
            WHEN '>'  THEN (args->>(cond->>'param')) COLLATE "C" >  (cond->>'value') COLLATE "C"
            WHEN '>=' THEN (args->>(cond->>'param')) COLLATE "C" >= (cond->>'value') COLLATE "C"
            ELSE false
        END
    WHEN cond->>'op' = '==' THEN args->(cond->>'param') = cond->'value'
    WHEN cond->>'op' = '!=' THEN args->(cond->>'param') <> cond->'value'
    ELSE false
END
$$;
-- +goose StatementEnd

-- Whether every condition of a strike holds for a task's arguments.
-- +goose StatementBegin
CREATE FUNCTION shadows.strike_matches(conditions jsonb, args jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT NOT EXISTS (
    SELECT 1 FROM jsonb_array_elements(conditions) AS c
    WHERE NOT shadows.condition_holds(args, c)
)
$$;
-- +goose StatementEnd

-- Tasks a hold strike keeps waiting leave the claim index, so they cost
-- claims nothing; restoring the strike releases them.
ALTER TABLE shadows.tasks ADD COLUMN held boolean NOT NULL DEFAULT false;
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
ALTER TABLE shadows.tasks DROP COLUMN held;
DROP FUNCTION shadows.strike_matches(jsonb, jsonb);
DROP FUNCTION shadows.condition_holds(jsonb, jsonb);
DROP TABLE shadows.strikes;
