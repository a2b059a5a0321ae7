-- Worker side: claiming, lease renewal and recording how tasks ended.

-- name: ClaimDue :many
-- The hot path. The inner scan walks tasks_claimable in exactly its order
-- and stops after max_rows due rows; future, held and waiting rows are never
-- read. A claimed row judged at add time under other strikes than the
-- queue's current ones (its strike epoch differs) is judged again: a
-- matching hold strike sets it aside
-- (held) untouched, any other matching strike cancels it, and the rest start
-- running. Rows set aside or cancelled come back with struck_by naming the
-- strike, so the worker can log them. The updates find their rows by
-- physical address (ctid), stable because the rows are locked, so no join
-- can be misplanned however stale the table's statistics are.
-- after_run_at/after_seq, when given, start the scan past that position
-- in claim order: the worker passes the last row its previous claim took,
-- so the scan does not walk again over the index entries of the rows
-- claimed before (dead until a vacuum, and in a backlog the largest part
-- of every scan). Rows that become due behind that position are found by
-- the next claim without it (see the worker's claim loop).
WITH epoch AS (
    SELECT coalesce((SELECT epoch FROM shadows.strike_epochs WHERE queue = @queue::text), 0) AS e
), due AS (
    SELECT d.ctid::tid AS tid, d.task, d.args, d.strike_epoch FROM shadows.tasks d
    WHERE d.queue = @queue::text AND d.state = 'scheduled' AND NOT d.held AND d.waiting_on IS NULL
      AND d.run_at <= now()
      AND (d.run_at, d.seq) > (coalesce(sqlc.narg('after_run_at')::timestamptz, '-infinity'::timestamptz),
                               coalesce(sqlc.narg('after_seq')::bigint, 0))
    ORDER BY d.run_at, d.seq
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED
), judged AS (
    -- Only tasks judged under other strikes than today's are judged again;
    -- the rest (nearly always all of them) pass straight through.
    SELECT due.tid, NULL::text AS rule, NULL::bool AS hold
    FROM due WHERE due.strike_epoch = (SELECT e FROM epoch)
    UNION ALL
    SELECT due.tid, st.rule, st.hold
    FROM due LEFT JOIN LATERAL (
        SELECT s.rule, s.hold FROM shadows.strikes s
        WHERE s.queue = @queue::text AND (s.task IS NULL OR s.task = due.task)
          AND jsonb_path_exists(due.args, s.path, '{}', true)
        ORDER BY s.hold, s.rule
        LIMIT 1
    ) AS st ON true
    WHERE due.strike_epoch <> (SELECT e FROM epoch)
), set_aside AS (
    -- A held row records the epoch it was judged under: the sweep
    -- releases it if the strikes change before this commits (see
    -- ReleaseStaleHolds).
    UPDATE shadows.tasks t
    SET held = judged.hold,
        strike_epoch = CASE WHEN judged.hold THEN (SELECT e FROM epoch) ELSE t.strike_epoch END,
        state = CASE WHEN judged.hold THEN t.state ELSE 'cancelled' END,
        finished_at = CASE WHEN judged.hold THEN NULL ELSE now() END,
        expires_at = CASE WHEN judged.hold THEN NULL
                          ELSE now() + make_interval(secs => @ttl_seconds::float8) END,
        error = CASE WHEN judged.hold THEN NULL ELSE 'struck: ' || judged.rule END
    FROM judged
    WHERE judged.rule IS NOT NULL AND t.ctid = judged.tid
    RETURNING t.key, t.task, t.generation, t.attempt, t.run_at, t.seq, judged.rule, judged.hold
), claimed AS (
    UPDATE shadows.tasks t
    SET state = 'running', worker = @worker::text, started_at = now(),
        deliveries = t.deliveries + 1,
        lease_expires_at = now() + make_interval(secs => @lease_seconds::float8)
    WHERE t.ctid = ANY (ARRAY(SELECT tid FROM judged WHERE rule IS NULL))
    -- The arguments go out as plain bytes: the worker decodes them into the
    -- task's type itself, and a jsonb column would be parsed once more on
    -- the way (pgx validates JSON it scans into json.RawMessage).
    RETURNING t.key, t.task, convert_to(t.args::text, 'UTF8') AS args, t.generation, t.attempt, t.run_at,
        t.deliveries, t.started_at, t.trace_context, t.seq
)
SELECT key, task, args, generation, attempt, run_at, seq, deliveries, started_at, trace_context,
    NULL::text AS struck_by, false AS held
FROM claimed
UNION ALL
SELECT key, task, '\x'::bytea, generation, attempt, run_at, seq, 0, NULL::timestamptz, NULL::jsonb,
    rule, hold
FROM set_aside;

-- name: ClaimDueUnstruck :many
-- ClaimDue in one plain statement, for the rows that need no judging: those
-- judged at add time under the queue's current strikes (their strike epoch
-- is the queue's), which ClaimDue would start as they are. The judging and
-- the common table expressions it needs are left out (in a burn they cost
-- about a fifth of the claim's execution). The scan takes the next
-- max_rows rows in claim order as ClaimDue's does, and of those claims the
-- ones that need no judging; the others are left as they were, unlocked
-- when the statement ends, and the statement comes back short, so the
-- caller claims again with ClaimDue, which judges them in their turn. A
-- row judged under older strikes is thus never skipped for later ones.
-- after_run_at/after_seq are ClaimDue's. The worker uses it while a backlog
-- lasts (its claims come back full).
UPDATE shadows.tasks t
SET state = 'running', worker = @worker::text, started_at = now(),
    deliveries = t.deliveries + 1,
    lease_expires_at = now() + make_interval(secs => @lease_seconds::float8)
WHERE t.ctid = ANY (ARRAY(
    SELECT next.ctid FROM (
        SELECT d.ctid, d.strike_epoch FROM shadows.tasks d
        WHERE d.queue = @queue::text AND d.state = 'scheduled' AND NOT d.held AND d.waiting_on IS NULL
          AND d.run_at <= now()
          AND (d.run_at, d.seq) > (coalesce(sqlc.narg('after_run_at')::timestamptz, '-infinity'::timestamptz),
                                   coalesce(sqlc.narg('after_seq')::bigint, 0))
        ORDER BY d.run_at, d.seq
        LIMIT @max_rows
        FOR UPDATE SKIP LOCKED
    ) AS next
    WHERE next.strike_epoch = coalesce((SELECT e.epoch FROM shadows.strike_epochs e WHERE e.queue = @queue::text), 0)))
RETURNING t.key, t.task, convert_to(t.args::text, 'UTF8') AS args, t.generation, t.attempt, t.run_at,
    t.seq, t.deliveries, t.started_at, t.trace_context;

-- name: ClaimLapsed :many
-- Redelivery: running tasks whose lease lapsed because their worker stopped
-- renewing it (it died or lost the database). A lapsed task that was asked
-- to cancel ends cancelled instead (at the cancel's time). As a claim does,
-- a redelivery judges a task under strikes that changed since it was last
-- judged: a matching hold sets it aside (scheduled, held), any other
-- matching strike cancels it, as docket drops a struck redelivered task.
-- The caller's own runs in flight (key, generation and claim time) are
-- skipped: it still runs them, and will renew or finish them.
WITH epoch AS (
    SELECT coalesce((SELECT epoch FROM shadows.strike_epochs WHERE queue = @queue::text), 0) AS e
), lapsed AS (
    SELECT l.ctid::tid AS tid, l.cancel_requested, l.task, l.args, l.strike_epoch FROM shadows.tasks l
    WHERE l.queue = @queue::text AND l.state = 'running' AND l.lease_expires_at < now()
      AND NOT EXISTS (
          SELECT 1 FROM (SELECT unnest(@in_flight::text[]) AS k, unnest(@in_flight_generations::bigint[]) AS g,
                                unnest(@in_flight_started_ats::timestamptz[]) AS s) AS f
          WHERE f.k = l.key AND f.g = l.generation AND f.s = l.started_at)
    ORDER BY l.lease_expires_at
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED
), judged AS (
    SELECT lapsed.tid, lapsed.cancel_requested, st.rule, st.hold
    FROM lapsed LEFT JOIN LATERAL (
        SELECT s.rule, s.hold FROM shadows.strikes s
        WHERE lapsed.strike_epoch <> (SELECT e FROM epoch) AND NOT lapsed.cancel_requested
          AND s.queue = @queue::text AND (s.task IS NULL OR s.task = lapsed.task)
          AND jsonb_path_exists(lapsed.args, s.path, '{}', true)
        ORDER BY s.hold, s.rule
        LIMIT 1
    ) AS st ON true
), cancelled AS (
    UPDATE shadows.tasks t
    SET state = 'cancelled', finished_at = coalesce(t.finished_at, now()), lease_expires_at = NULL,
        expires_at = now() + make_interval(secs => @ttl_seconds::float8),
        error = CASE WHEN judged.rule IS NOT NULL THEN 'struck: ' || judged.rule ELSE t.error END
    FROM judged
    WHERE t.ctid = judged.tid AND (judged.cancel_requested OR (judged.rule IS NOT NULL AND NOT judged.hold))
), set_aside AS (
    UPDATE shadows.tasks t
    SET state = 'scheduled', held = true, strike_epoch = (SELECT e FROM epoch), worker = NULL,
        started_at = NULL, lease_expires_at = NULL
    FROM judged
    WHERE t.ctid = judged.tid AND judged.rule IS NOT NULL AND judged.hold
)
UPDATE shadows.tasks t
SET worker = @worker::text, started_at = now(), deliveries = t.deliveries + 1,
    lease_expires_at = now() + make_interval(secs => @lease_seconds::float8)
WHERE t.ctid = ANY (ARRAY(SELECT tid FROM judged WHERE NOT cancel_requested AND rule IS NULL))
RETURNING t.key, t.task, t.args, t.generation, t.attempt, t.run_at,
    t.deliveries, t.started_at, t.trace_context;

-- name: ReleaseStaleHolds :one
-- The backstop for holds a removed strike could not release: an add or a
-- claim that held a task under a hold, in a transaction that committed
-- after DeleteStrike released the held tasks. Tasks held under an older
-- strike epoch than the queue's are released; the claim judges them again
-- (the epoch differs) and holds them anew if a hold still matches.
WITH released AS (
    UPDATE shadows.tasks t
    SET held = false
    WHERE t.queue = @queue::text AND t.held
      AND t.strike_epoch <> coalesce((SELECT epoch FROM shadows.strike_epochs WHERE queue = @queue::text), 0)
    RETURNING t.run_at <= now() AS due
)
SELECT count(*)::bigint AS released,
    CASE WHEN bool_or(due) THEN (SELECT true FROM pg_notify('shadows_ready', @queue::text))
         ELSE false END::bool AS notified
FROM released;

-- name: Unclaim :one
-- Concurrency limits: see shadows.unclaim_runs. Returns the released keys
-- that tasks wait on.
SELECT shadows.unclaim_runs(@queue::text, @worker::text, @keys::text[], @generations::bigint[],
                            @started_ats::timestamptz[], @ttl_seconds::float8,
                            @limit_keys::text[], @run_ids::bigint[])::text[] AS waiting;

-- name: NextDue :one
-- When the earliest scheduled task becomes due, so an idle worker can sleep
-- exactly until then.
SELECT run_at
FROM shadows.tasks
WHERE queue = @queue::text AND state = 'scheduled' AND NOT held AND waiting_on IS NULL
ORDER BY run_at, seq
LIMIT 1;

-- name: RenewLeases :many
-- Extends the leases of this worker's running tasks and returns the runs
-- (key, generation and start) among them that a cancel asked to stop: runs
-- of the row's own generation with a cancel requested, and runs that a
-- replace superseded whose key was cancelled since (a cancel stops every
-- run of its key; the notification that says so may have been missed).
-- Each row is found by its primary key and locked, in the order given (the
-- caller sorts by key, as FinishTasks' caller does, so the two never
-- deadlock).
WITH found AS (
    SELECT u.key AS run_key, u.generation AS run_generation, u.deliveries AS run_deliveries,
           u.started_at AS run_started_at, t.*
    FROM (SELECT unnest(@keys::text[]) AS key, unnest(@generations::bigint[]) AS generation,
                 unnest(@deliveries::int[]) AS deliveries, unnest(@started_ats::timestamptz[]) AS started_at) AS u
    JOIN LATERAL (
        SELECT r.ctid::tid AS tid, r.generation, r.deliveries, r.started_at, r.state, r.worker,
            r.cancel_requested
        FROM shadows.tasks r
        WHERE r.queue = @queue::text AND r.key = u.key
        LIMIT 1 -- a fence: the outer conditions stay out, only the primary key is used
        FOR UPDATE
    ) AS t ON true
), mine AS (
    SELECT f.tid, f.run_key, f.run_generation, f.run_started_at, f.cancel_requested
    FROM found f
    WHERE f.generation = f.run_generation AND f.deliveries = f.run_deliveries
      AND f.started_at = f.run_started_at AND f.state = 'running' AND f.worker = @worker::text
), renewed AS (
    UPDATE shadows.tasks t
    SET lease_expires_at = now() + make_interval(secs => @lease_seconds::float8)
    WHERE t.ctid = ANY (ARRAY(SELECT tid FROM mine))
)
SELECT run_key::text AS key, run_generation::bigint AS generation, run_started_at::timestamptz AS started_at
FROM mine WHERE cancel_requested
UNION ALL
SELECT run_key::text, run_generation::bigint, run_started_at::timestamptz
FROM found WHERE generation > run_generation AND cancel_requested;

-- name: FinishTasks :one
-- Records how a batch of runs ended, each in one of two ways:
--   - ended (completed, failed, cancelled): the record gets its end state;
--     with no record lifetime the row is deleted instead;
--   - rescheduled (state 'scheduled': a retry, or a perpetual task's next
--     run; 'deferred': a run an admission rule put off before its handler
--     ran): the same row becomes the next run — new time, arguments and attempt, next
--     generation — so the end of one run and the birth of the next are one
--     atomic row update, and a crash can neither lose nor double the chain.
-- Each outcome is guarded by the generation, delivery and start time its
-- worker claimed: the late outcome of a run whose lease lapsed cannot end
-- the delivery that replaced it, nor can an old run end a new run that has
-- its key and generation (a key's generation starts again at 1 when its
-- record is gone, so an old run that outlived the record can share both). A run that was asked to cancel is never rescheduled: it ends completed if
-- its handler succeeded and cancelled otherwise. A row whose generation
-- moved on was replaced or re-added while it ran: it is left alone
-- (superseded). Notifications wake result waiters and, when a
-- rescheduled run is already due, idle workers.
WITH ended AS (
    SELECT unnest(@keys::text[]) AS key, unnest(@generations::bigint[]) AS generation,
           unnest(@states::text[]) AS state, unnest(@errors::text[]) AS error,
           unnest(@results::text[]) AS result, unnest(@next_run_ats::timestamptz[]) AS next_run_at,
           unnest(@next_args::text[]) AS next_args, unnest(@next_attempts::int[]) AS next_attempt,
           unnest(@deliveries::int[]) AS deliveries, unnest(@started_ats::timestamptz[]) AS started_at
), target AS (
    -- Each outcome's row, found by primary key and locked (in the order
    -- given: the caller sorts by key), if it is still the run that ended.
    SELECT ended.*, t.tid, t.cancel_requested
    FROM ended JOIN LATERAL (
        SELECT r.ctid::tid AS tid, r.generation, r.deliveries, r.started_at, r.state, r.cancel_requested
        FROM shadows.tasks r
        WHERE r.queue = @queue::text AND r.key = ended.key
        LIMIT 1 -- a fence: the outer conditions stay out, only the primary key is used
        FOR UPDATE
    ) AS t ON true
    WHERE t.generation = ended.generation AND t.deliveries = ended.deliveries
      AND t.started_at = ended.started_at AND t.state = 'running'
), rescheduled AS (
    UPDATE shadows.tasks t
    SET state = 'scheduled', run_at = target.next_run_at,
        args = coalesce(nullif(target.next_args, '')::jsonb, t.args),
        -- New arguments were judged by no strike yet: the claim judges them
        -- (as docket's replace does when a perpetual task goes on).
        strike_epoch = CASE WHEN target.next_args <> '' THEN -1 ELSE t.strike_epoch END,
        attempt = target.next_attempt, generation = t.generation + 1, deliveries = 0,
        worker = NULL, started_at = NULL, lease_expires_at = NULL,
        error = nullif(target.error, ''), result = NULL
    FROM target
    WHERE t.ctid = target.tid AND target.state IN ('scheduled', 'deferred') AND NOT target.cancel_requested
    RETURNING t.key, t.run_at <= now() AS due
), updated AS (
    UPDATE shadows.tasks t
    -- A cancelled run that was to go on ends completed if its handler
    -- succeeded, cancelled otherwise (and when its handler never ran: an
    -- admission rule deferred it).
    SET state = CASE WHEN target.state NOT IN ('scheduled', 'deferred') THEN target.state
                     WHEN target.state = 'scheduled' AND target.error = '' THEN 'completed'
                     ELSE 'cancelled' END::shadows.task_state,
        finished_at = now(), lease_expires_at = NULL,
        expires_at = now() + make_interval(secs => @ttl_seconds::float8),
        error = nullif(target.error, ''), result = nullif(target.result, '')::jsonb
    FROM target
    WHERE t.ctid = target.tid AND (target.state NOT IN ('scheduled', 'deferred') OR target.cancel_requested)
      AND @ttl_seconds::float8 > 0
    RETURNING t.key
), deleted AS (
    DELETE FROM shadows.tasks t
    USING target
    WHERE t.ctid = target.tid AND (target.state NOT IN ('scheduled', 'deferred') OR target.cancel_requested)
      AND @ttl_seconds::float8 <= 0
    RETURNING t.key
)
SELECT ((SELECT count(*) FROM updated) + (SELECT count(*) FROM deleted)
        + (SELECT count(*) FROM rescheduled))::bigint AS n,
    (SELECT true FROM pg_notify('shadows_done', @queue::text))::bool AS notified_done,
    CASE WHEN EXISTS (SELECT 1 FROM rescheduled WHERE due)
         THEN (SELECT true FROM pg_notify('shadows_ready', @queue::text))
         ELSE false END::bool AS notified_ready;

-- name: CompleteTasks :one
-- FinishTasks for the common batch: every run succeeded with no result and
-- nothing to reschedule. The same guards, in less SQL and three arrays
-- instead of nine.
WITH ended AS (
    SELECT unnest(@keys::text[]) AS key, unnest(@generations::bigint[]) AS generation,
           unnest(@deliveries::int[]) AS deliveries, unnest(@started_ats::timestamptz[]) AS started_at
), target AS (
    SELECT t.tid
    FROM ended JOIN LATERAL (
        SELECT r.ctid::tid AS tid, r.generation, r.deliveries, r.started_at, r.state
        FROM shadows.tasks r
        WHERE r.queue = @queue::text AND r.key = ended.key
        LIMIT 1 -- a fence: the outer conditions stay out, only the primary key is used
        FOR UPDATE
    ) AS t ON true
    WHERE t.generation = ended.generation AND t.deliveries = ended.deliveries
      AND t.started_at = ended.started_at AND t.state = 'running'
), updated AS (
    UPDATE shadows.tasks t
    SET state = 'completed', finished_at = now(), lease_expires_at = NULL,
        expires_at = now() + make_interval(secs => @ttl_seconds::float8),
        error = NULL, result = NULL
    WHERE t.ctid = ANY (ARRAY(SELECT tid FROM target)) AND @ttl_seconds::float8 > 0
    RETURNING 1
), deleted AS (
    DELETE FROM shadows.tasks t
    WHERE t.ctid = ANY (ARRAY(SELECT tid FROM target)) AND @ttl_seconds::float8 <= 0
    RETURNING 1
)
SELECT ((SELECT count(*) FROM updated) + (SELECT count(*) FROM deleted))::bigint AS n,
    (SELECT true FROM pg_notify('shadows_done', @queue::text))::bool AS notified_done;

-- name: SetProgress :exec
-- Progress of a running task, guarded by the generation and start time its
-- worker claimed.
-- A null argument leaves that part as it is; an empty message clears it.
UPDATE shadows.tasks
SET progress_current = CASE
        WHEN sqlc.narg('current')::bigint IS NOT NULL THEN sqlc.narg('current')::bigint
        WHEN sqlc.narg('increment')::bigint IS NOT NULL
            THEN coalesce(progress_current, 0) + sqlc.narg('increment')::bigint
        ELSE progress_current END,
    progress_total = coalesce(sqlc.narg('total')::bigint, progress_total),
    progress_message = CASE WHEN sqlc.narg('message')::text IS NULL THEN progress_message
                            ELSE nullif(sqlc.narg('message')::text, '') END,
    progress_at = now()
WHERE queue = @queue::text AND key = @key::text AND generation = @generation::bigint
  AND started_at = @started_at::timestamptz AND state = 'running';

-- name: AcquireSlots :many
-- Concurrency limits: see shadows.take_slots and shadows.acquire_slots.
-- Returns the tasks parked.
SELECT parked_key::text AS key, parked_on::text AS waiting_on
FROM shadows.take_slots(@queue::text, @tasks::text[], @generations::bigint[], @started_ats::timestamptz[],
                        @run_ids::bigint[],
                        @limit_keys::text[], @maxes::int[], @lease_seconds::float8);

-- name: RenewSlots :one
-- Extends the leases of the concurrency slots held by this worker's runs
-- in flight, including runs whose task was replaced or cancelled while
-- they ran: their slots count until their handlers return. Returns how
-- many were gone (lapsed and swept). Its own statement, holding no task
-- row locks, so it never waits in a cycle with acquire_slots.
SELECT shadows.renew_slots(@queue::text, @limit_keys::text[], @run_ids::bigint[], @lease_seconds::float8)::int AS lost;

-- name: ReleaseSlots :one
-- Concurrency limits: see shadows.release_slots. One row per slot; returns
-- the released keys that tasks wait on.
SELECT shadows.release_slots(@queue::text, @limit_keys::text[], @run_ids::bigint[])::text[] AS waiting;

-- name: WakeFreed :one
-- Concurrency limits: see shadows.wake_freed.
SELECT shadows.wake_freed(@queue::text, @limit_keys::text[])::int AS woken;

-- name: WakeWaiters :one
SELECT shadows.wake_waiters(@queue::text)::int AS woken;

-- name: Admit :one
-- Admission control: see shadows.admit.
SELECT action::text AS action, delay_seconds::float8 AS delay_seconds, coalesce(reason, '')::text AS reason
FROM shadows.admit(@queue::text, @task_key::text, @kinds::text[], @keys::text[],
                   @seconds::float8[], @limits::int[], @drops::bool[]);

-- name: DeleteExpiredAdmissions :exec
-- Garbage: cooldowns and debounces past their expiry; rate events older than
-- a day (no sensible period is longer).
WITH c AS (DELETE FROM shadows.cooldowns WHERE expires_at < now()),
     d AS (DELETE FROM shadows.debounces WHERE expires_at < now())
DELETE FROM shadows.rate_events WHERE at < now() - interval '1 day';
