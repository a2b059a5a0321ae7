-- +goose Up
-- The whole state of shadows lives in this schema. A queue is a value of the
-- "queue" column, so any number of named queues share these tables.
CREATE SCHEMA IF NOT EXISTS shadows;

-- Stored states of a task. "queued" is not stored: a scheduled task whose
-- run_at has passed is queued, so the scheduled → queued transition costs no
-- write (see the shadows.executions view).
CREATE SEQUENCE shadows.task_seq;

CREATE TYPE shadows.task_state AS ENUM (
    'scheduled', 'running', 'completed', 'failed', 'cancelled'
);

-- One row per task key: the task while it is live, its execution record once
-- it has ended (until expires_at). Re-adding a key whose record is terminal
-- overwrites the row with a higher generation.
CREATE TABLE shadows.tasks (
    queue            text               NOT NULL,
    key              text               NOT NULL,
    task             text               NOT NULL,
    args             jsonb              NOT NULL,
    state            shadows.task_state NOT NULL DEFAULT 'scheduled',
    -- Bumped by every re-add and replace; a worker's writes are guarded by the
    -- generation it claimed, so an old copy never overwrites a newer one.
    generation       bigint             NOT NULL DEFAULT 1,
    -- Insertion order, the tie-break among tasks due at the same moment.
    seq              bigint             NOT NULL DEFAULT nextval('shadows.task_seq'),
    run_at           timestamptz        NOT NULL DEFAULT now(),
    attempt          integer            NOT NULL DEFAULT 1,
    -- Claims of this generation; more than one means the task was redelivered.
    deliveries       integer            NOT NULL DEFAULT 0,
    worker           text,
    -- Set by a cancel that found the task running: its worker cancels the
    -- handler and records how it ended, or, if that worker is gone, the
    -- task ends cancelled when its lease lapses instead of running again.
    cancel_requested boolean            NOT NULL DEFAULT false,
    started_at       timestamptz,
    lease_expires_at timestamptz,
    finished_at      timestamptz,
    expires_at       timestamptz,
    error            text,
    result           jsonb,
    created_at       timestamptz        NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, key),
    CONSTRAINT tasks_queue_length CHECK (octet_length(queue) BETWEEN 1 AND 200),
    CONSTRAINT tasks_key_length CHECK (octet_length(key) BETWEEN 1 AND 1000),
    CONSTRAINT tasks_task_length CHECK (octet_length(task) BETWEEN 1 AND 200)
);

-- The claim path: exactly the predicate and order of the claim query, and only
-- rows that can be claimed. Finished rows are not in it at all.
CREATE INDEX tasks_due ON shadows.tasks (queue, run_at, seq) WHERE state = 'scheduled';

-- The redelivery path: running tasks by lease expiry.
CREATE INDEX tasks_lease ON shadows.tasks (queue, lease_expires_at) WHERE state = 'running';

-- Garbage collection of expired execution records.
CREATE INDEX tasks_expiry ON shadows.tasks (expires_at) WHERE expires_at IS NOT NULL;

-- Workers announce themselves here while they are ready to claim work.
CREATE TABLE shadows.workers (
    queue      text        NOT NULL,
    name       text        NOT NULL,
    tasks      text[]      NOT NULL DEFAULT '{}',
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, name)
);

-- The execution records as users think of them, with the derived "queued"
-- state. Plain SQL over this view answers most questions about a queue.
CREATE VIEW shadows.executions AS
SELECT queue, key, task, args,
       CASE WHEN state = 'scheduled' AND run_at <= now() THEN 'queued'
            ELSE state::text END AS state,
       run_at AS "when", attempt, generation, deliveries > 1 AS redelivered,
       worker, cancel_requested, started_at, finished_at, error, result, created_at, expires_at
FROM shadows.tasks;

-- +goose Down
DROP VIEW IF EXISTS shadows.executions;
DROP TABLE IF EXISTS shadows.workers;
DROP TABLE IF EXISTS shadows.tasks;
DROP TYPE IF EXISTS shadows.task_state;
DROP SEQUENCE IF EXISTS shadows.task_seq;
DROP SCHEMA IF EXISTS shadows;
