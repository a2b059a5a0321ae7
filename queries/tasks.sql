-- Producer side: adding, replacing and cancelling tasks, reading records.

-- name: AddTask :one
-- Adds a task unless a strike matches it or its key is live. A key whose
-- record is terminal is overwritten with the next generation; a live key
-- (scheduled, queued or running, unless a cancel ended it) stores nothing
-- and returns a null generation, which the caller reports as "already
-- scheduled". A matching
-- (non-hold) strike stores nothing and names itself in struck_by ('' when
-- none does). Due tasks
-- wake idle workers through one notification.
WITH epoch AS (
    SELECT coalesce((SELECT epoch FROM shadows.strike_epochs WHERE queue = @queue::text), 0) AS e
), strikes AS (
    SELECT s.rule, s.hold FROM shadows.strikes s
    WHERE s.queue = @queue::text AND (s.task IS NULL OR s.task = @task::text)
      AND jsonb_path_exists(@args::jsonb, s.path, '{}', true)
), struck AS (
    SELECT rule FROM strikes WHERE NOT hold ORDER BY rule LIMIT 1
), ins AS (
    INSERT INTO shadows.tasks AS t (queue, key, task, args, run_at, trace_context, held, strike_epoch)
    SELECT @queue::text, @key::text, @task::text, @args::jsonb,
           coalesce(sqlc.narg('run_at')::timestamptz, now()), sqlc.narg('trace_context')::jsonb,
           EXISTS (SELECT 1 FROM strikes WHERE hold), (SELECT e FROM epoch)
    WHERE NOT EXISTS (SELECT 1 FROM struck)
    ON CONFLICT (queue, key) DO UPDATE
    SET task = excluded.task, args = excluded.args, run_at = excluded.run_at,
    trace_context = excluded.trace_context, strike_epoch = excluded.strike_epoch, state = 'scheduled', generation = t.generation + 1, seq = excluded.seq,
    attempt = 1, deliveries = 0, worker = NULL, cancel_requested = false, started_at = NULL,
    lease_expires_at = NULL, finished_at = NULL, expires_at = NULL,
    error = NULL, result = NULL, created_at = now(), held = excluded.held, waiting_on = NULL, waiting_max = NULL,
    progress_current = NULL, progress_total = NULL, progress_message = NULL, progress_at = NULL
    -- An ended key, or a running one that a cancel already ended as far
    -- as users can see (its handler is winding down): as docket does, a
    -- cancel frees the key at once, and the old run can no longer record
    -- anything (its generation is gone). Its concurrency slots are its
    -- own and count until its handler returns.
    WHERE t.state IN ('completed', 'failed', 'cancelled')
       OR (t.state = 'running' AND t.cancel_requested)
    RETURNING t.generation, t.run_at, t.created_at
)
SELECT coalesce((SELECT rule FROM struck), '')::text AS struck_by,
    ins.generation, ins.run_at, ins.created_at,
    CASE WHEN ins.run_at <= now() THEN (SELECT true FROM pg_notify('shadows_ready', @queue::text))
         ELSE false END::bool AS notified
FROM (SELECT 1) AS one LEFT JOIN ins ON true;

-- name: ReplaceTask :one
-- Adds a task, overwriting whatever the key holds, unless a strike matches
-- it. A running copy keeps running, but its generation is gone, so it can
-- neither finish nor renew the new record.
WITH epoch AS (
    SELECT coalesce((SELECT epoch FROM shadows.strike_epochs WHERE queue = @queue::text), 0) AS e
), strikes AS (
    SELECT s.rule, s.hold FROM shadows.strikes s
    WHERE s.queue = @queue::text AND (s.task IS NULL OR s.task = @task::text)
      AND jsonb_path_exists(@args::jsonb, s.path, '{}', true)
), struck AS (
    SELECT rule FROM strikes WHERE NOT hold ORDER BY rule LIMIT 1
), ins AS (
    INSERT INTO shadows.tasks AS t (queue, key, task, args, run_at, trace_context, held, strike_epoch)
    SELECT @queue::text, @key::text, @task::text, @args::jsonb,
           coalesce(sqlc.narg('run_at')::timestamptz, now()), sqlc.narg('trace_context')::jsonb,
           EXISTS (SELECT 1 FROM strikes WHERE hold), (SELECT e FROM epoch)
    WHERE NOT EXISTS (SELECT 1 FROM struck)
    ON CONFLICT (queue, key) DO UPDATE
    SET task = excluded.task, args = excluded.args, run_at = excluded.run_at,
    trace_context = excluded.trace_context, strike_epoch = excluded.strike_epoch, state = 'scheduled', generation = t.generation + 1, seq = excluded.seq,
    attempt = 1, deliveries = 0, worker = NULL, cancel_requested = false, started_at = NULL,
    lease_expires_at = NULL, finished_at = NULL, expires_at = NULL,
    error = NULL, result = NULL, created_at = now(), held = excluded.held, waiting_on = NULL, waiting_max = NULL,
    progress_current = NULL, progress_total = NULL, progress_message = NULL, progress_at = NULL
    RETURNING t.generation, t.run_at, t.created_at
)
SELECT coalesce((SELECT rule FROM struck), '')::text AS struck_by,
    ins.generation, ins.run_at, ins.created_at,
    CASE WHEN ins.run_at <= now() THEN (SELECT true FROM pg_notify('shadows_ready', @queue::text))
         ELSE false END::bool AS notified
FROM (SELECT 1) AS one LEFT JOIN ins ON true;

-- name: AddTasks :many
-- AddMany: every row of the batch in one statement, with AddTask's rules.
-- Keys must be distinct within the batch. Returns one row per input key:
-- struck_by names the strike that kept it out ('' when none did), and a null
-- generation means the key was live.
WITH input AS (
    SELECT unnest(@keys::text[]) AS key, unnest(@tasks::text[]) AS task,
           unnest(@args::text[])::jsonb AS args, unnest(@run_ats::timestamptz[]) AS run_at,
           unnest(@run_at_sets::bool[]) AS run_at_set
), epoch AS (
    SELECT coalesce((SELECT epoch FROM shadows.strike_epochs WHERE queue = @queue::text), 0) AS e
), judged AS (
    SELECT input.*, st.struck_by, coalesce(st.held, false) AS held
    FROM input LEFT JOIN LATERAL (
        SELECT min(s.rule) FILTER (WHERE NOT s.hold) AS struck_by, bool_or(s.hold) AS held
        FROM shadows.strikes s
        WHERE (SELECT EXISTS (SELECT 1 FROM shadows.strikes WHERE queue = @queue::text))
          AND s.queue = @queue::text AND (s.task IS NULL OR s.task = input.task)
          AND jsonb_path_exists(input.args, s.path, '{}', true)
    ) AS st ON true
), ins AS (
    INSERT INTO shadows.tasks AS t (queue, key, task, args, run_at, trace_context, held, strike_epoch)
    SELECT @queue::text, key, task, args, CASE WHEN run_at_set THEN run_at ELSE now() END,
           sqlc.narg('trace_context')::jsonb, held, (SELECT e FROM epoch)
    FROM judged
    WHERE struck_by IS NULL
    ON CONFLICT (queue, key) DO UPDATE
    SET task = excluded.task, args = excluded.args, run_at = excluded.run_at,
    trace_context = excluded.trace_context, strike_epoch = excluded.strike_epoch, state = 'scheduled', generation = t.generation + 1, seq = excluded.seq,
    attempt = 1, deliveries = 0, worker = NULL, cancel_requested = false, started_at = NULL,
    lease_expires_at = NULL, finished_at = NULL, expires_at = NULL,
    error = NULL, result = NULL, created_at = now(), held = excluded.held, waiting_on = NULL, waiting_max = NULL,
    progress_current = NULL, progress_total = NULL, progress_message = NULL, progress_at = NULL
    -- An ended key, or a running one that a cancel already ended as far
    -- as users can see (its handler is winding down): as docket does, a
    -- cancel frees the key at once, and the old run can no longer record
    -- anything (its generation is gone). Its concurrency slots are its
    -- own and count until its handler returns.
    WHERE t.state IN ('completed', 'failed', 'cancelled')
       OR (t.state = 'running' AND t.cancel_requested)
    RETURNING t.key, t.generation, t.run_at, t.created_at
)
SELECT judged.key::text AS key, coalesce(judged.struck_by, '')::text AS struck_by, ins.generation, ins.run_at, ins.created_at
FROM judged LEFT JOIN ins ON ins.key = judged.key;

-- name: AddManyPrelude :one
-- What AddMany's fast path needs to know, in its transaction: the queue's
-- strike epoch, whether it has strikes at all, and the transaction's time.
-- Rows stored under this epoch without being judged are judged at claim
-- time if a strike arrives meanwhile (the epoch moves on).
SELECT coalesce((SELECT epoch FROM shadows.strike_epochs WHERE queue = @queue::text), 0)::bigint AS epoch,
    EXISTS (SELECT 1 FROM shadows.strikes WHERE queue = @queue::text) AS has_strikes,
    now()::timestamptz AS now;

-- name: NotifyReady :exec
SELECT pg_notify('shadows_ready', @queue::text);

-- name: CancelTask :one
-- Cancels a task that has not ended. The claim query only takes scheduled
-- rows, so a cancelled task that was due but unclaimed can never start. A
-- running task is ended at once as far as users see it (its record reads
-- cancelled, from now, and its key can be added again), while its worker, told by a notification naming the
-- run's generation, cancels the handler and records how it really ended
-- (cancelled, or as the handler ended if it ignored the cancel). Until
-- then the row stays running, so the run keeps its lease and its slots.
-- As docket's cancel stops whatever runs under the key, the notification
-- also names the generation below which every run of the key stops: runs
-- that a replace, or a cancel and a new add, left running under an older
-- generation. A scheduled row past generation 1 may have such runs, so its
-- cancel notifies too ("generation" then names the generation before it,
-- which workers of earlier versions cancel). Result waiters are woken.
WITH old AS (
    SELECT key, state, generation, started_at FROM shadows.tasks
    WHERE queue = @queue::text AND key = @key::text AND state IN ('scheduled', 'running')
    FOR UPDATE
), upd AS (
    UPDATE shadows.tasks t
    SET state = CASE WHEN old.state = 'running' THEN t.state ELSE 'cancelled' END,
        -- Set on every cancelled row, running or not: it tells a Cancel
        -- (which stops every run of the key) from a Clear (which stops
        -- none), for lease renewals that stop runs a replace left running
        -- when their worker missed the notification.
        cancel_requested = true,
        -- An ended record is neither held nor waiting (a running row is
        -- neither anyway).
        held = false, waiting_on = NULL, waiting_max = NULL,
        -- A second cancel of a winding-down run keeps the first one's time.
        finished_at = coalesce(t.finished_at, now()),
        expires_at = CASE WHEN old.state = 'running' THEN NULL
                          ELSE now() + make_interval(secs => @ttl_seconds::float8) END
    FROM old
    WHERE t.queue = @queue::text AND t.key = old.key
    RETURNING old.state AS previous, old.generation, old.started_at
)
SELECT upd.previous, upd.generation,
    CASE WHEN upd.previous = 'running' OR upd.generation > 1
         THEN (SELECT true FROM pg_notify('shadows_cancel', json_build_object(
                   'queue', @queue::text, 'key', @key::text,
                   'generation', CASE WHEN upd.previous = 'running' THEN upd.generation
                                      ELSE upd.generation - 1 END,
                   'started', CASE WHEN upd.previous = 'running'
                                   THEN (extract(epoch FROM upd.started_at) * 1000000)::bigint END,
                   'below', upd.generation)::text))
         ELSE false END::bool AS notified,
    (SELECT true FROM pg_notify('shadows_done', @queue::text))::bool AS notified_done
FROM upd;

-- name: DeleteTask :exec
-- Removes the record of a task that Cancel just ended, for a queue without
-- record lifetime. Only that record: a task added again under the key
-- between the two statements (a new generation) stays.
DELETE FROM shadows.tasks
WHERE queue = @queue::text AND key = @key::text AND state = 'cancelled' AND generation = @generation::bigint;

-- name: GetTask :one
SELECT queue, key, task, args, state, generation, run_at, attempt, deliveries,
       worker, started_at, finished_at, expires_at, error, result, created_at,
       progress_current, progress_total, progress_message, progress_at, held,
       coalesce(waiting_on, '')::text AS waiting_on, cancel_requested,
       now()::timestamptz AS now
FROM shadows.tasks
WHERE queue = @queue::text AND key = @key::text;

-- name: GetTasks :many
-- GetTask for several keys: the live tasks that AddMany's entries met.
SELECT queue, key, task, args, state, generation, run_at, attempt, deliveries,
       worker, started_at, finished_at, expires_at, error, result, created_at,
       progress_current, progress_total, progress_message, progress_at, held,
       coalesce(waiting_on, '')::text AS waiting_on, cancel_requested,
       now()::timestamptz AS now
FROM shadows.tasks
WHERE queue = @queue::text AND key = ANY (@keys::text[]);

-- name: ClearTasks :one
-- Removes every task that has not started. With a record lifetime the rows
-- stay as cancelled records; without one they are deleted.
WITH cleared AS (
    UPDATE shadows.tasks
    SET state = 'cancelled', finished_at = now(), held = false, waiting_on = NULL, waiting_max = NULL,
        expires_at = now() + make_interval(secs => @ttl_seconds::float8)
    WHERE queue = @queue::text AND state = 'scheduled' AND @ttl_seconds::float8 > 0
    RETURNING 1
), deleted AS (
    DELETE FROM shadows.tasks
    WHERE queue = @queue::text AND state = 'scheduled' AND @ttl_seconds::float8 <= 0
    RETURNING 1
), counted AS (
    SELECT ((SELECT count(*) FROM cleared) + (SELECT count(*) FROM deleted))::bigint AS n
)
-- Result waiters are woken, as by a cancel.
SELECT n, CASE WHEN n > 0 THEN (SELECT true FROM pg_notify('shadows_done', @queue::text))
               ELSE false END::bool AS notified
FROM counted;

-- name: CountTasks :one
-- Snapshot counters: all live tasks, those not yet started (due or future),
-- those due now, and those running.
SELECT count(*) FILTER (WHERE state IN ('scheduled', 'running'))::bigint AS total,
       count(*) FILTER (WHERE state = 'scheduled')::bigint AS pending,
       count(*) FILTER (WHERE state = 'scheduled' AND run_at <= now())::bigint AS due,
       count(*) FILTER (WHERE state = 'running')::bigint AS running,
       count(*) FILTER (WHERE state = 'scheduled' AND held)::bigint AS held,
       count(*) FILTER (WHERE state = 'scheduled' AND waiting_on IS NOT NULL)::bigint AS waiting,
       now()::timestamptz AS now
FROM shadows.tasks
WHERE queue = @queue::text AND state IN ('scheduled', 'running');

-- name: ListRunning :many
SELECT key, task, generation, run_at, attempt, worker, started_at
FROM shadows.tasks
WHERE queue = @queue::text AND state = 'running'
ORDER BY started_at, key
LIMIT @max_rows;

-- name: ListPending :many
SELECT key, task, generation, run_at, attempt
FROM shadows.tasks
WHERE queue = @queue::text AND state = 'scheduled'
ORDER BY run_at, seq
LIMIT @max_rows;

-- name: HasLiveTasks :one
-- Whether anything is still to run: scheduled (future included) or running.
SELECT (EXISTS (
    SELECT 1 FROM shadows.tasks WHERE queue = @queue::text AND state = 'scheduled' AND NOT held
) OR EXISTS (
    SELECT 1 FROM shadows.tasks WHERE queue = @queue::text AND state = 'running'
))::bool AS live;

-- name: DeleteExpired :execrows
-- Removes up to max_rows expired execution records. SKIP LOCKED lets several
-- workers collect garbage at once without waiting on each other.
DELETE FROM shadows.tasks
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM shadows.tasks
    WHERE expires_at < now() AND state IN ('completed', 'failed', 'cancelled')
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED
));

-- name: TaskStats :many
-- Live tasks per task name: how many, running, due, future, and the
-- earliest and latest due times.
SELECT task,
       count(*)::bigint AS total,
       count(*) FILTER (WHERE state = 'running')::bigint AS running,
       count(*) FILTER (WHERE state = 'scheduled' AND run_at <= now())::bigint AS queued,
       count(*) FILTER (WHERE state = 'scheduled' AND run_at > now())::bigint AS scheduled,
       min(run_at)::timestamptz AS oldest,
       max(run_at)::timestamptz AS newest
FROM shadows.tasks
WHERE queue = @queue::text AND state IN ('scheduled', 'running')
GROUP BY task
ORDER BY count(*) DESC, task;
