-- +goose Up
-- Queue names, task keys, task names, limit keys and worker names compare
-- byte by byte (collation "C"), whatever the database's collation. They
-- are identifiers, not prose: nothing sorts them for people to read, and Go
-- orders them by bytes too. Under a linguistic collation every comparison
-- in the primary key and the slot keys went through strcoll; in a burn of
-- 100,000 tasks that was about a tenth of the database's CPU (measured:
-- 5.1 s of database CPU per 100,000 tasks before, 4.3 s after, medians of
-- four runs on a C.UTF-8 database). Changing a column's collation rebuilds
-- the indexes on it: this migration holds each table's lock while it does.
-- The views pin their columns' types, so they are dropped and created
-- again around the change; the privileges granted on them are kept aside
-- and granted again. (A view of your own built on one of them stops the
-- migration: drop it first, and create it again after.)
-- +goose StatementBegin
DO $$
BEGIN
    CREATE TEMP TABLE shadows_view_grants ON COMMIT DROP AS
    SELECT c.relname::text AS view, a.grantee, a.privilege_type, a.is_grantable
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL aclexplode(c.relacl) AS a
    WHERE n.nspname = 'shadows' AND c.relname IN ('executions', 'concurrency')
      AND a.grantee <> c.relowner;
END
$$;
-- +goose StatementEnd
DROP VIEW shadows.executions;
DROP VIEW shadows.concurrency;
ALTER TABLE shadows.tasks
    ALTER COLUMN queue TYPE text COLLATE "C",
    ALTER COLUMN key TYPE text COLLATE "C",
    ALTER COLUMN task TYPE text COLLATE "C",
    ALTER COLUMN waiting_on TYPE text COLLATE "C",
    ALTER COLUMN worker TYPE text COLLATE "C";
ALTER TABLE shadows.slots
    ALTER COLUMN queue TYPE text COLLATE "C",
    ALTER COLUMN limit_key TYPE text COLLATE "C",
    ALTER COLUMN task_key TYPE text COLLATE "C";
ALTER TABLE shadows.cooldowns
    ALTER COLUMN queue TYPE text COLLATE "C",
    ALTER COLUMN key TYPE text COLLATE "C";
ALTER TABLE shadows.debounces
    ALTER COLUMN queue TYPE text COLLATE "C",
    ALTER COLUMN key TYPE text COLLATE "C",
    ALTER COLUMN winner TYPE text COLLATE "C";
ALTER TABLE shadows.rate_events
    ALTER COLUMN queue TYPE text COLLATE "C",
    ALTER COLUMN key TYPE text COLLATE "C",
    ALTER COLUMN task_key TYPE text COLLATE "C";
ALTER TABLE shadows.strikes
    ALTER COLUMN queue TYPE text COLLATE "C",
    ALTER COLUMN task TYPE text COLLATE "C";
ALTER TABLE shadows.strike_epochs
    ALTER COLUMN queue TYPE text COLLATE "C";
ALTER TABLE shadows.workers
    ALTER COLUMN queue TYPE text COLLATE "C",
    ALTER COLUMN name TYPE text COLLATE "C";

CREATE VIEW shadows.executions AS
SELECT queue, key, task, args,
       CASE WHEN state = 'scheduled' AND run_at <= now() THEN 'queued'
            WHEN state = 'running' AND cancel_requested THEN 'cancelled'
            ELSE state::text END AS state,
       run_at AS "when", attempt, generation, deliveries > 1 AS redelivered,
       worker, cancel_requested, started_at, finished_at, error, result, created_at, expires_at,
       progress_current, progress_total, progress_message, progress_at, held
FROM shadows.tasks;

CREATE VIEW shadows.concurrency AS
SELECT s.queue, s.limit_key, count(*) AS running, max(s.max_slots) AS max_slots
FROM shadows.slots s
WHERE s.lease_expires_at > now()
GROUP BY s.queue, s.limit_key;

-- +goose StatementBegin
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT * FROM shadows_view_grants LOOP
        EXECUTE format('GRANT %s ON shadows.%I TO %s%s', g.privilege_type, g.view,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END,
                       CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
    DROP TABLE shadows_view_grants;
END
$$;
-- +goose StatementEnd

-- Changing a column's type drops its statistics.
ANALYZE shadows.tasks, shadows.slots, shadows.cooldowns, shadows.debounces, shadows.rate_events,
    shadows.strikes, shadows.strike_epochs, shadows.workers;

-- +goose Down
-- The views pin their columns' types, so they are dropped and created
-- again around the change; the privileges granted on them are kept aside
-- and granted again. (A view of your own built on one of them stops the
-- migration: drop it first, and create it again after.)
-- +goose StatementBegin
DO $$
BEGIN
    CREATE TEMP TABLE shadows_view_grants ON COMMIT DROP AS
    SELECT c.relname::text AS view, a.grantee, a.privilege_type, a.is_grantable
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL aclexplode(c.relacl) AS a
    WHERE n.nspname = 'shadows' AND c.relname IN ('executions', 'concurrency')
      AND a.grantee <> c.relowner;
END
$$;
-- +goose StatementEnd
DROP VIEW shadows.executions;
DROP VIEW shadows.concurrency;
ALTER TABLE shadows.tasks
    ALTER COLUMN queue TYPE text COLLATE pg_catalog."default",
    ALTER COLUMN key TYPE text COLLATE pg_catalog."default",
    ALTER COLUMN task TYPE text COLLATE pg_catalog."default",
    ALTER COLUMN waiting_on TYPE text COLLATE pg_catalog."default",
    ALTER COLUMN worker TYPE text COLLATE pg_catalog."default";
ALTER TABLE shadows.slots
    ALTER COLUMN queue TYPE text COLLATE pg_catalog."default",
    ALTER COLUMN limit_key TYPE text COLLATE pg_catalog."default",
    ALTER COLUMN task_key TYPE text COLLATE pg_catalog."default";
ALTER TABLE shadows.cooldowns
    ALTER COLUMN queue TYPE text COLLATE pg_catalog."default",
    ALTER COLUMN key TYPE text COLLATE pg_catalog."default";
ALTER TABLE shadows.debounces
    ALTER COLUMN queue TYPE text COLLATE pg_catalog."default",
    ALTER COLUMN key TYPE text COLLATE pg_catalog."default",
    ALTER COLUMN winner TYPE text COLLATE pg_catalog."default";
ALTER TABLE shadows.rate_events
    ALTER COLUMN queue TYPE text COLLATE pg_catalog."default",
    ALTER COLUMN key TYPE text COLLATE pg_catalog."default",
    ALTER COLUMN task_key TYPE text COLLATE pg_catalog."default";
ALTER TABLE shadows.strikes
    ALTER COLUMN queue TYPE text COLLATE pg_catalog."default",
    ALTER COLUMN task TYPE text COLLATE pg_catalog."default";
ALTER TABLE shadows.strike_epochs
    ALTER COLUMN queue TYPE text COLLATE pg_catalog."default";
ALTER TABLE shadows.workers
    ALTER COLUMN queue TYPE text COLLATE pg_catalog."default",
    ALTER COLUMN name TYPE text COLLATE pg_catalog."default";

CREATE VIEW shadows.executions AS
SELECT queue, key, task, args,
       CASE WHEN state = 'scheduled' AND run_at <= now() THEN 'queued'
            WHEN state = 'running' AND cancel_requested THEN 'cancelled'
            ELSE state::text END AS state,
       run_at AS "when", attempt, generation, deliveries > 1 AS redelivered,
       worker, cancel_requested, started_at, finished_at, error, result, created_at, expires_at,
       progress_current, progress_total, progress_message, progress_at, held
FROM shadows.tasks;

CREATE VIEW shadows.concurrency AS
SELECT s.queue, s.limit_key, count(*) AS running, max(s.max_slots) AS max_slots
FROM shadows.slots s
WHERE s.lease_expires_at > now()
GROUP BY s.queue, s.limit_key;

-- +goose StatementBegin
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT * FROM shadows_view_grants LOOP
        EXECUTE format('GRANT %s ON shadows.%I TO %s%s', g.privilege_type, g.view,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END,
                       CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
    DROP TABLE shadows_view_grants;
END
$$;
-- +goose StatementEnd

-- Changing a column's type drops its statistics.
ANALYZE shadows.tasks, shadows.slots, shadows.cooldowns, shadows.debounces, shadows.rate_events,
    shadows.strikes, shadows.strike_epochs, shadows.workers;
