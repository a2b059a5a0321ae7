-- +goose Up
-- Concurrency slots belong to runs and carry leases of their own.
--
-- A slot is now held by one run, named by an id its worker draws at random
-- when it asks for slots (a redelivery is a new run and draws anew), and
-- counts while its lease is live. The lease is set when the slot is taken
-- and renewed by the worker for as long as the handler runs, whether or not
-- the task's row still belongs to that run; the slot is released in the
-- same transaction that records the run's outcome. Until now a slot counted
-- only while the task's row ran at the slot's generation, so a run whose
-- task was replaced (or cancelled and re-added) while it ran stopped
-- counting although its handler went on, and the copy that replaced it took
-- over its slot: the limit could be exceeded. Now both copies hold a slot
-- each, and the new copy waits for the old one's when the limit is full.
-- Task keys and generations can repeat (a deleted record's key starts again
-- at generation 1), which is why slots are not named by them.
--
-- Workers of an earlier version neither renew slot leases nor name runs:
-- stop them before migrating. Slots they held keep counting until their
-- runs' leases lapse.
ALTER TABLE shadows.slots ADD COLUMN lease_expires_at timestamptz, ADD COLUMN run_id bigint;
UPDATE shadows.slots s SET lease_expires_at = t.lease_expires_at
FROM shadows.tasks t
WHERE t.queue = s.queue AND t.key = s.task_key AND t.generation = s.generation
  AND t.state = 'running' AND t.lease_expires_at IS NOT NULL;
DELETE FROM shadows.slots WHERE lease_expires_at IS NULL;
-- Ids no worker draws (workers draw positive ones).
UPDATE shadows.slots s SET run_id = -n.i
FROM (SELECT ctid AS tid, row_number() OVER () AS i FROM shadows.slots) AS n
WHERE s.ctid = n.tid;
-- The primary key is the only index: one narrow index entry per slot
-- taken; every statement on slots but the sweep names the limit key.
ALTER TABLE shadows.slots
    ALTER COLUMN lease_expires_at SET NOT NULL,
    ALTER COLUMN run_id SET NOT NULL,
    DROP CONSTRAINT slots_pkey,
    ADD PRIMARY KEY (queue, limit_key, run_id);
DROP INDEX shadows.slots_holder;

-- The functions that read and write slots run with enable_seqscan off. The
-- table churns (a row per limited run, deleted when it ends), so its
-- statistics are nearly always wrong: an ANALYZE that found it empty made
-- the planner join a batch's hundreds of slots by scanning the table once
-- per slot (90 ms instead of 2 ms for 450 slots, measured). Every slot
-- statement has an index that serves it.

-- Slot work locks its limit keys for the rest of the transaction, in a
-- fixed order so that concurrent callers never deadlock. Keys are locked by
-- bucket (64 per queue) instead of one by one: a batch of a thousand keys
-- took a thousand advisory locks, which cost about a quarter of slot work and
-- could exhaust the server's lock table ("out of shared memory") when a few
-- large batches ran at once. Keys sharing a bucket wait for each other; no
-- key is ever unlocked while slot work on it runs.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.lock_keys(p_queue text, p_keys text[]) RETURNS void
LANGUAGE sql AS $$
SELECT count(pg_advisory_xact_lock(hashtext('shadows.slots/' || p_queue), b))
FROM (SELECT DISTINCT (hashtextextended(k, 0) & 63)::integer AS b FROM unnest(p_keys) AS k ORDER BY 1) AS buckets;
$$;
-- +goose StatementEnd

CREATE OR REPLACE VIEW shadows.concurrency AS
SELECT s.queue, s.limit_key, count(*) AS running, max(s.max_slots) AS max_slots
FROM shadows.slots s
WHERE s.lease_expires_at > now()
GROUP BY s.queue, s.limit_key;

-- As before: wakes, on keys whose locks the caller holds, as many waiting
-- tasks as each key has free slots, oldest first. Slots count by lease.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.wake_keys(p_queue text, p_keys text[]) RETURNS integer
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_woke integer;
BEGIN
    WITH maxes AS (
        SELECT k, greatest(
            (SELECT max(s.max_slots) FROM shadows.slots s WHERE s.queue = p_queue AND s.limit_key = k),
            (SELECT max(w.waiting_max) FROM shadows.tasks w
             WHERE w.queue = p_queue AND w.waiting_on = k AND w.state = 'scheduled')) AS m
        FROM unnest(p_keys) AS k
    ), free AS (
        SELECT k, m - (
            SELECT count(*) FROM shadows.slots s
            WHERE s.queue = p_queue AND s.limit_key = k AND s.lease_expires_at > now()
        ) AS n
        FROM maxes WHERE m IS NOT NULL
    ), chosen AS (
        SELECT w.key FROM free f CROSS JOIN LATERAL (
            SELECT key FROM shadows.tasks
            WHERE queue = p_queue AND waiting_on = f.k AND state = 'scheduled'
            ORDER BY seq
            LIMIT greatest(f.n, 0)
        ) AS w
    )
    UPDATE shadows.tasks t SET waiting_on = NULL, waiting_max = NULL
    FROM chosen WHERE t.queue = p_queue AND t.key = chosen.key;
    GET DIAGNOSTICS v_woke = ROW_COUNT;
    IF v_woke > 0 THEN
        PERFORM pg_notify('shadows_ready', p_queue);
    END IF;
    RETURN v_woke;
END
$$;
-- +goose StatementEnd

DROP FUNCTION shadows.acquire_slots(text, text[], bigint[], text[], integer[]);

-- Takes slots for claimed (running) runs. Each row of the input is one
-- limit of one run: the run p_runs[i] of task p_tasks[i] (claimed at
-- generation p_generations[i], at time p_started[i]) needs a slot of p_keys[i], of which at most
-- p_maxes[i] may be held; a slot taken is leased for p_lease_seconds. Runs
-- are served in the order their tasks were due; a run gets all of its
-- slots or none: if any of its keys is full, or older tasks already wait on
-- it, the task is parked on that key (back to scheduled, the claim undone,
-- no attempt spent) and returned. A parked run whose task was superseded
-- meanwhile parks nothing (its worker drops it). The whole batch is decided
-- with a handful of statements, whatever its size.
-- +goose StatementBegin
CREATE FUNCTION shadows.acquire_slots(p_queue text, p_tasks text[], p_generations bigint[],
                                      p_started timestamptz[], p_runs bigint[],
                                      p_keys text[], p_maxes integer[], p_lease_seconds float8)
RETURNS TABLE (parked_key text, parked_on text)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_idx     jsonb;        -- key → its position in the arrays below
    v_used    integer[];    -- slots in use per key, counting those granted here
    v_first   bigint[];     -- per key, seq of the oldest task waiting on it
    v_waiters boolean := false;
    v_lease   timestamptz := now() + make_interval(secs => p_lease_seconds);
    r         record;
    v_run     bigint;
    v_task    text;
    v_seq     bigint;
    v_gen     bigint;
    v_started timestamptz;
    v_pos     integer[] := '{}';
    v_maxes   integer[] := '{}';
    v_blocked integer;
    g_tasks   text[] := '{}';
    g_gens    bigint[] := '{}';
    g_runs    bigint[] := '{}';
    g_keys    text[] := '{}';
    g_maxes   integer[] := '{}';
    p_t       text[] := '{}';
    p_k       text[] := '{}';
    p_m       integer[] := '{}';
    p_g       bigint[] := '{}';
    p_s       timestamptz[] := '{}';
    v_keys    text[];
    i         integer;
    j         integer;
BEGIN
    PERFORM shadows.lock_keys(p_queue, p_keys);
    SELECT array_agg(k ORDER BY k) INTO v_keys FROM (SELECT DISTINCT k FROM unnest(p_keys) AS k) AS d;
    SELECT jsonb_object_agg(k, n) INTO v_idx FROM unnest(v_keys) WITH ORDINALITY AS u(k, n);
    v_used := array_fill(0, ARRAY[array_length(v_keys, 1)]);
    v_first := array_fill(NULL::bigint, ARRAY[array_length(v_keys, 1)]);
    -- Live slots per key. Every lookup names its key, so each is one probe
    -- of the primary key whatever the table's statistics say. The asking
    -- runs hold none yet: each run asks once, under an id of its own.
    FOR r IN
        SELECT k.k, (SELECT count(*) FROM shadows.slots s
                     WHERE s.queue = p_queue AND s.limit_key = k.k AND s.lease_expires_at > now()) AS n
        FROM unnest(v_keys) AS k(k)
    LOOP
        v_used[(v_idx ->> r.k)::integer] := r.n;
    END LOOP;
    FOR r IN
        SELECT waiting_on AS k, min(seq) AS s FROM shadows.tasks
        WHERE queue = p_queue AND state = 'scheduled' AND waiting_on = ANY (v_keys)
        GROUP BY waiting_on
    LOOP
        v_first[(v_idx ->> r.k)::integer] := r.s;
        v_waiters := true;
    END LOOP;

    -- The common batch: nobody waits on its keys and every key has room
    -- for all of the batch's runs. Every run gets its slots; no need to
    -- order the runs and decide them one by one.
    IF NOT v_waiters AND NOT EXISTS (
        SELECT 1 FROM (
            SELECT u.k, count(*) AS n, min(u.m) AS m FROM unnest(p_keys, p_maxes) AS u(k, m) GROUP BY u.k
        ) AS d
        WHERE v_used[(v_idx ->> d.k)::integer] + d.n > d.m
    ) THEN
        INSERT INTO shadows.slots (queue, limit_key, run_id, task_key, generation, max_slots, lease_expires_at)
        SELECT p_queue, u.k, u.r, u.t, u.g, u.m, v_lease
        FROM unnest(p_tasks, p_generations, p_runs, p_keys, p_maxes) AS u(t, g, r, k, m)
        ON CONFLICT (queue, limit_key, run_id) DO NOTHING;
        RETURN;
    END IF;

    -- One pass over the limits, run by run in due order; a run is decided
    -- when its last limit has been read (the sentinel row at the end closes
    -- the last one). A run whose task row is gone (its task was cancelled
    -- and its record deleted meanwhile) comes last and is decided like any
    -- other: granted, it holds its slots while it runs; blocked, its worker
    -- drops it.
    FOR r IN
        SELECT * FROM (
            SELECT 0 AS last, u.r, u.t, u.g, u.s, (v_idx ->> u.k)::integer AS pos, u.m, tk.seq,
                   coalesce(tk.run_at, 'infinity') AS run_at
            FROM unnest(p_tasks, p_generations, p_started, p_runs, p_keys, p_maxes) AS u(t, g, s, r, k, m)
            LEFT JOIN shadows.tasks tk ON tk.queue = p_queue AND tk.key = u.t
            UNION ALL SELECT 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'infinity'
        ) AS x
        ORDER BY last, run_at, seq NULLS LAST, r, pos
    LOOP
        IF v_run IS NOT NULL AND r.r IS DISTINCT FROM v_run THEN
            v_blocked := NULL;
            FOR i IN 1 .. array_length(v_pos, 1) LOOP
                j := v_pos[i];
                IF v_used[j] >= v_maxes[i] OR coalesce(v_first[j], v_seq) < v_seq THEN
                    v_blocked := i;
                    EXIT;
                END IF;
            END LOOP;
            IF v_blocked IS NULL THEN
                FOR i IN 1 .. array_length(v_pos, 1) LOOP
                    j := v_pos[i];
                    v_used[j] := v_used[j] + 1;
                    g_tasks := array_append(g_tasks, v_task);
                    g_gens := array_append(g_gens, v_gen);
                    g_runs := array_append(g_runs, v_run);
                    g_keys := array_append(g_keys, v_keys[j]);
                    g_maxes := array_append(g_maxes, v_maxes[i]);
                END LOOP;
            ELSE
                j := v_pos[v_blocked];
                p_t := array_append(p_t, v_task);
                p_k := array_append(p_k, v_keys[j]);
                p_m := array_append(p_m, v_maxes[v_blocked]);
                p_g := array_append(p_g, v_gen);
                p_s := array_append(p_s, v_started);
                -- Later tasks on this key queue behind it.
                IF v_first[j] IS NULL THEN
                    v_first[j] := v_seq;
                END IF;
            END IF;
            v_pos := '{}';
            v_maxes := '{}';
        END IF;
        EXIT WHEN r.last = 1;
        v_run := r.r;
        v_task := r.t;
        v_seq := r.seq;
        v_gen := r.g;
        v_started := r.s;
        v_pos := array_append(v_pos, r.pos);
        v_maxes := array_append(v_maxes, r.m);
    END LOOP;

    INSERT INTO shadows.slots (queue, limit_key, run_id, task_key, generation, max_slots, lease_expires_at)
    SELECT p_queue, u.k, u.r, u.t, u.g, u.m, v_lease
    FROM unnest(g_tasks, g_gens, g_runs, g_keys, g_maxes) AS u(t, g, r, k, m)
    ON CONFLICT (queue, limit_key, run_id) DO NOTHING;

    IF array_length(p_t, 1) > 0 THEN
        -- Rows are locked in key order first, as lease renewals and
        -- outcome batches lock them, so those never wait in a cycle with
        -- this update.
        PERFORM 1 FROM shadows.tasks t
        WHERE t.queue = p_queue AND t.key = ANY (p_t)
        ORDER BY t.key
        FOR UPDATE;
        UPDATE shadows.tasks t
        SET state = 'scheduled', waiting_on = u.k, waiting_max = u.m,
            worker = NULL, started_at = NULL, lease_expires_at = NULL,
            deliveries = greatest(t.deliveries - 1, 0)
        FROM unnest(p_t, p_k, p_m, p_g, p_s) AS u(t, k, m, g, s)
        -- Only the claimed run (generation and claim time): a superseded
        -- run parks nothing (its worker drops it), and never the run that
        -- replaced it, nor another worker's run of the key. A run
        -- cancelled since its claim is not parked either (parked, it would
        -- be woken and run): its worker drops it, and it ends cancelled
        -- when its lease lapses.
        WHERE t.queue = p_queue AND t.key = u.t AND t.generation = u.g AND t.started_at = u.s
          AND t.state = 'running' AND NOT t.cancel_requested;
    END IF;

    -- Tasks parked behind older waiters while slots were free: wake those
    -- waiters rather than leave them to the backstop.
    IF v_waiters THEN
        PERFORM shadows.wake_keys(p_queue, ARRAY(
            SELECT v_keys[n] FROM generate_subscripts(v_first, 1) AS n WHERE v_first[n] IS NOT NULL));
    END IF;
    RETURN QUERY SELECT u.t, u.k FROM unnest(p_t, p_k) AS u(t, k);
END
$$;
-- +goose StatementEnd

DROP FUNCTION shadows.release_slots(text, text[], bigint[]);

-- Frees the slots of runs that ended (slot i is p_keys[i] of run p_runs[i])
-- and returns those of the keys that tasks wait on. Workers call it in the
-- transaction that records the runs' outcomes, so a slot never outlives
-- the record of its run's end. It takes no advisory lock: freeing capacity
-- cannot break a limit (an acquire that counted the slot just waits for
-- the next wake-up), and a lock held until the worker's commit would make
-- every other slot operation of the queue wait on that worker's round
-- trips. The waiters are woken after the commit (wake_freed).
-- +goose StatementBegin
CREATE FUNCTION shadows.release_slots(p_queue text, p_keys text[], p_runs bigint[])
RETURNS text[]
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_waiting text[];
BEGIN
    -- Each slot found by its primary key and locked, then deleted by its
    -- physical address.
    DELETE FROM shadows.slots s
    WHERE s.ctid = ANY (ARRAY(
        SELECT x.tid FROM unnest(p_keys, p_runs) AS u(k, r)
        CROSS JOIN LATERAL (
            SELECT h.ctid AS tid FROM shadows.slots h
            WHERE h.queue = p_queue AND h.limit_key = u.k AND h.run_id = u.r
            LIMIT 1 -- a fence: looked up one by one, by the primary key
            FOR UPDATE
        ) AS x));
    SELECT array_agg(DISTINCT waiting_on) INTO v_waiting FROM shadows.tasks
    WHERE queue = p_queue AND state = 'scheduled' AND waiting_on = ANY (p_keys);
    RETURN coalesce(v_waiting, '{}');
END
$$;
-- +goose StatementEnd

-- Wakes, on keys whose slots were just released, as many waiting tasks as
-- each has free slots, oldest first, and returns how many it woke. If a
-- worker never gets to call it (it crashed after its commit), the sweep
-- wakes them instead.
-- +goose StatementBegin
CREATE FUNCTION shadows.wake_freed(p_queue text, p_keys text[]) RETURNS integer
LANGUAGE plpgsql SET enable_seqscan = off AS $$
BEGIN
    PERFORM shadows.lock_keys(p_queue, p_keys);
    RETURN shadows.wake_keys(p_queue, p_keys);
END
$$;
-- +goose StatementEnd

-- Extends the leases of slots held by runs in flight (slot i is p_keys[i]
-- of run p_runs[i]) to p_lease_seconds from now, and returns how many of
-- them it did not find: slots whose lease lapsed (the worker could not
-- renew them in time) and that a sweep then deleted. Callers sort the
-- slots by key and run, so two renewals lock them in the same order.
-- +goose StatementBegin
CREATE FUNCTION shadows.renew_slots(p_queue text, p_keys text[], p_runs bigint[], p_lease_seconds float8)
RETURNS integer
LANGUAGE sql SET enable_seqscan = off AS $$
WITH renewed AS (
    UPDATE shadows.slots s
    SET lease_expires_at = now() + make_interval(secs => p_lease_seconds)
    WHERE s.ctid = ANY (ARRAY(
        SELECT x.tid FROM unnest(p_keys, p_runs) WITH ORDINALITY AS u(k, r, i)
        CROSS JOIN LATERAL (
            SELECT h.ctid AS tid FROM shadows.slots h
            WHERE h.queue = p_queue AND h.limit_key = u.k AND h.run_id = u.r
            LIMIT 1 -- a fence: looked up one by one, by the primary key
            FOR UPDATE
        ) AS x
        ORDER BY u.i))
    RETURNING 1
)
SELECT (cardinality(p_keys) - (SELECT count(*) FROM renewed))::integer;
$$;
-- +goose StatementEnd

-- The backstop for waiters whose slots freed without a release, run by
-- every worker's sweep: wakes what capacity allows on every key with
-- waiters. A slot whose lease lapsed (its worker died or lost the database)
-- no longer counts; the sweep also deletes such slots. Keys are locked
-- before slot rows, as everywhere else, and slots a renewal holds are
-- skipped, so the sweep never waits in a cycle.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.wake_waiters(p_queue text) RETURNS integer
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_lapsed text[];
    v_keys   text[];
BEGIN
    SELECT array_agg(DISTINCT l.limit_key) INTO v_lapsed FROM shadows.slots l
    WHERE l.queue = p_queue AND l.lease_expires_at <= now();
    SELECT array_agg(DISTINCT waiting_on) INTO v_keys FROM shadows.tasks
    WHERE queue = p_queue AND state = 'scheduled' AND waiting_on IS NOT NULL;
    IF v_lapsed IS NULL AND v_keys IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM shadows.lock_keys(p_queue, coalesce(v_lapsed, '{}') || coalesce(v_keys, '{}'));
    IF v_lapsed IS NOT NULL THEN
        DELETE FROM shadows.slots s
        WHERE s.ctid = ANY (ARRAY(
            SELECT l.ctid FROM shadows.slots l
            WHERE l.queue = p_queue AND l.limit_key = ANY (v_lapsed) AND l.lease_expires_at <= now()
            FOR UPDATE SKIP LOCKED));
    END IF;
    IF v_keys IS NULL THEN
        RETURN 0;
    END IF;
    RETURN shadows.wake_keys(p_queue, v_keys);
END
$$;
-- +goose StatementEnd

-- +goose Down
-- Slots count by their run's row again (as in 00004 and 00007).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.wake_waiters(p_queue text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_keys text[];
BEGIN
    SELECT array_agg(DISTINCT waiting_on) INTO v_keys FROM shadows.tasks
    WHERE queue = p_queue AND state = 'scheduled' AND waiting_on IS NOT NULL;
    IF v_keys IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM shadows.lock_keys(p_queue, v_keys);
    DELETE FROM shadows.slots s
    WHERE s.queue = p_queue AND s.limit_key = ANY (v_keys) AND NOT EXISTS (
        SELECT 1 FROM shadows.tasks t
        WHERE t.queue = s.queue AND t.key = s.task_key AND t.generation = s.generation
          AND t.state = 'running');
    RETURN shadows.wake_keys(p_queue, v_keys);
END
$$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.lock_keys(p_queue text, p_keys text[]) RETURNS void
LANGUAGE sql AS $$
SELECT count(pg_advisory_xact_lock(hashtextextended(p_queue || '/' || k, 0)))
FROM (SELECT DISTINCT k FROM unnest(p_keys) AS k ORDER BY 1) AS keys;
$$;
-- +goose StatementEnd
DROP FUNCTION shadows.renew_slots(text, text[], bigint[], float8);
DROP FUNCTION shadows.acquire_slots(text, text[], bigint[], timestamptz[], bigint[], text[], integer[], float8);
DROP FUNCTION shadows.wake_freed(text, text[]);
DROP FUNCTION shadows.release_slots(text, text[], bigint[]);
-- +goose StatementBegin
CREATE FUNCTION shadows.release_slots(p_queue text, p_tasks text[], p_generations bigint[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_keys    text[];
    v_waiting text[];
BEGIN
    -- Lock the keys first, as everything else that touches slots does, then
    -- free the slots: a sweep deleting the same stale slots waits here
    -- instead of deadlocking.
    SELECT array_agg(DISTINCT s.limit_key) INTO v_keys FROM shadows.slots s
    JOIN unnest(p_tasks, p_generations) AS u(t, g) ON s.task_key = u.t AND s.generation = u.g
    WHERE s.queue = p_queue;
    IF v_keys IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM shadows.lock_keys(p_queue, v_keys);
    DELETE FROM shadows.slots s
    USING unnest(p_tasks, p_generations) AS u(t, g)
    WHERE s.queue = p_queue AND s.task_key = u.t AND s.generation = u.g;
    SELECT array_agg(DISTINCT waiting_on) INTO v_waiting FROM shadows.tasks
    WHERE queue = p_queue AND state = 'scheduled' AND waiting_on = ANY (v_keys);
    IF v_waiting IS NULL THEN
        RETURN 0;
    END IF;
    RETURN shadows.wake_keys(p_queue, v_waiting);
END
$$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.acquire_slots(p_queue text, p_tasks text[], p_generations bigint[],
                                      p_keys text[], p_maxes integer[])
RETURNS TABLE (parked_key text, parked_on text)
LANGUAGE plpgsql AS $$
DECLARE
    v_idx     jsonb;        -- key → its position in the arrays below
    v_used    integer[];    -- slots in use per key, counting those granted here
    v_first   bigint[];     -- per key, seq of the oldest task waiting on it
    v_waiters boolean := false;
    r         record;
    v_cur     text;
    v_seq     bigint;
    v_gen     bigint;
    v_pos     integer[] := '{}';
    v_maxes   integer[] := '{}';
    v_blocked integer;
    g_tasks   text[] := '{}';
    g_gens    bigint[] := '{}';
    g_keys    text[] := '{}';
    g_maxes   integer[] := '{}';
    p_t       text[] := '{}';
    p_k       text[] := '{}';
    p_m       integer[] := '{}';
    p_g       bigint[] := '{}';
    v_keys    text[];
    i         integer;
    j         integer;
BEGIN
    PERFORM shadows.lock_keys(p_queue, p_keys);
    SELECT array_agg(k ORDER BY k) INTO v_keys FROM (SELECT DISTINCT k FROM unnest(p_keys) AS k) AS d;
    SELECT jsonb_object_agg(k, n) INTO v_idx FROM unnest(v_keys) WITH ORDINALITY AS u(k, n);
    v_used := array_fill(0, ARRAY[array_length(v_keys, 1)]);
    v_first := array_fill(NULL::bigint, ARRAY[array_length(v_keys, 1)]);
    -- Live holders per key, other than the asking tasks: a redelivered task
    -- keeps the slot it had.
    -- Slots are counted straight from shadows.slots; only a key whose raw
    -- count leaves too little room for this batch is recounted with its
    -- holders' liveness checked (a dead holder's slot does not count), so
    -- the join with tasks runs only for keys near their limit. The asking
    -- tasks are left out with a hash anti-join, not "<> ALL", which would
    -- compare every slot with every asking task.
    FOR r IN
        WITH asking AS (
            SELECT DISTINCT a.t FROM unnest(p_tasks) AS a(t)
        ), demand AS (
            SELECT u.k, count(*) AS n, min(u.m) AS m FROM unnest(p_keys, p_maxes) AS u(k, m) GROUP BY u.k
        ), raw AS (
            SELECT s.limit_key AS k, count(*) AS n FROM shadows.slots s
            LEFT JOIN asking ON asking.t = s.task_key
            WHERE s.queue = p_queue AND s.limit_key = ANY (v_keys) AND asking.t IS NULL
            GROUP BY s.limit_key
        )
        SELECT raw.k, CASE WHEN raw.n + demand.n <= demand.m THEN raw.n ELSE (
            SELECT count(*) FROM shadows.slots s
            JOIN shadows.tasks t ON t.queue = s.queue AND t.key = s.task_key AND t.generation = s.generation
            LEFT JOIN asking ON asking.t = s.task_key
            WHERE s.queue = p_queue AND s.limit_key = raw.k AND asking.t IS NULL
              AND t.state = 'running' AND t.lease_expires_at > now()) END AS n
        FROM raw JOIN demand ON demand.k = raw.k
    LOOP
        v_used[(v_idx ->> r.k)::integer] := r.n;
    END LOOP;
    FOR r IN
        SELECT waiting_on AS k, min(seq) AS s FROM shadows.tasks
        WHERE queue = p_queue AND state = 'scheduled' AND waiting_on = ANY (v_keys)
        GROUP BY waiting_on
    LOOP
        v_first[(v_idx ->> r.k)::integer] := r.s;
        v_waiters := true;
    END LOOP;

    -- The common batch: nobody waits on its keys and every key has room
    -- for all of the batch's tasks. Every task gets its slots; no need to
    -- order the tasks and decide them one by one.
    IF NOT v_waiters AND NOT EXISTS (
        SELECT 1 FROM (
            SELECT u.k, count(*) AS n, min(u.m) AS m FROM unnest(p_keys, p_maxes) AS u(k, m) GROUP BY u.k
        ) AS d
        WHERE v_used[(v_idx ->> d.k)::integer] + d.n > d.m
    ) THEN
        INSERT INTO shadows.slots (queue, limit_key, task_key, generation, max_slots)
        SELECT p_queue, u.k, u.t, u.g, u.m FROM unnest(p_tasks, p_generations, p_keys, p_maxes) AS u(t, g, k, m)
        ON CONFLICT (queue, limit_key, task_key) DO UPDATE
        SET generation = excluded.generation, max_slots = excluded.max_slots, acquired_at = now()
        WHERE shadows.slots.generation <= excluded.generation;
        RETURN;
    END IF;

    -- One pass over the limits, task by task in due order; a task is
    -- decided when its last limit has been read (the NULL row at the end
    -- closes the last one).
    FOR r IN
        SELECT u.t, u.g, (v_idx ->> u.k)::integer AS pos, u.m, tk.seq, tk.run_at
        FROM unnest(p_tasks, p_generations, p_keys, p_maxes) AS u(t, g, k, m)
        JOIN shadows.tasks tk ON tk.queue = p_queue AND tk.key = u.t
        UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, 'infinity'
        ORDER BY run_at, seq NULLS LAST, t, pos
    LOOP
        IF v_cur IS NOT NULL AND r.t IS DISTINCT FROM v_cur THEN
            v_blocked := NULL;
            FOR i IN 1 .. array_length(v_pos, 1) LOOP
                j := v_pos[i];
                IF v_used[j] >= v_maxes[i] OR coalesce(v_first[j], v_seq) < v_seq THEN
                    v_blocked := i;
                    EXIT;
                END IF;
            END LOOP;
            IF v_blocked IS NULL THEN
                FOR i IN 1 .. array_length(v_pos, 1) LOOP
                    j := v_pos[i];
                    v_used[j] := v_used[j] + 1;
                    g_tasks := array_append(g_tasks, v_cur);
                    g_gens := array_append(g_gens, v_gen);
                    g_keys := array_append(g_keys, v_keys[j]);
                    g_maxes := array_append(g_maxes, v_maxes[i]);
                END LOOP;
            ELSE
                j := v_pos[v_blocked];
                p_t := array_append(p_t, v_cur);
                p_k := array_append(p_k, v_keys[j]);
                p_m := array_append(p_m, v_maxes[v_blocked]);
                p_g := array_append(p_g, v_gen);
                -- Later tasks on this key queue behind it.
                IF v_first[j] IS NULL THEN
                    v_first[j] := v_seq;
                END IF;
            END IF;
            v_pos := '{}';
            v_maxes := '{}';
        END IF;
        EXIT WHEN r.t IS NULL;
        v_cur := r.t;
        v_seq := r.seq;
        v_gen := r.g;
        v_pos := array_append(v_pos, r.pos);
        v_maxes := array_append(v_maxes, r.m);
    END LOOP;

    INSERT INTO shadows.slots (queue, limit_key, task_key, generation, max_slots)
    SELECT p_queue, u.k, u.t, u.g, u.m FROM unnest(g_tasks, g_gens, g_keys, g_maxes) AS u(t, g, k, m)
    ON CONFLICT (queue, limit_key, task_key) DO UPDATE
    SET generation = excluded.generation, max_slots = excluded.max_slots, acquired_at = now()
    -- A run superseded by a replace never takes over the slot of the run
    -- that replaced it.
    WHERE shadows.slots.generation <= excluded.generation;

    IF array_length(p_t, 1) > 0 THEN
        UPDATE shadows.tasks t
        SET state = 'scheduled', waiting_on = u.k, waiting_max = u.m,
            worker = NULL, started_at = NULL, lease_expires_at = NULL,
            deliveries = greatest(t.deliveries - 1, 0)
        FROM unnest(p_t, p_k, p_m, p_g) AS u(t, k, m, g)
        -- Only the claimed generation: a superseded run parks nothing (its
        -- worker drops it), and never the run that replaced it.
        WHERE t.queue = p_queue AND t.key = u.t AND t.generation = u.g AND t.state = 'running';
    END IF;

    -- Tasks parked behind older waiters while slots were free: wake those
    -- waiters rather than leave them to the backstop.
    IF v_waiters THEN
        PERFORM shadows.wake_keys(p_queue, ARRAY(
            SELECT v_keys[n] FROM generate_subscripts(v_first, 1) AS n WHERE v_first[n] IS NOT NULL));
    END IF;
    RETURN QUERY SELECT u.t, u.k FROM unnest(p_t, p_k) AS u(t, k);
END
$$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.wake_keys(p_queue text, p_keys text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_woke integer;
BEGIN
    WITH maxes AS (
        SELECT k, greatest(
            (SELECT max(s.max_slots) FROM shadows.slots s WHERE s.queue = p_queue AND s.limit_key = k),
            (SELECT max(w.waiting_max) FROM shadows.tasks w
             WHERE w.queue = p_queue AND w.waiting_on = k AND w.state = 'scheduled')) AS m
        FROM unnest(p_keys) AS k
    ), free AS (
        SELECT k, m - (
            SELECT count(*) FROM shadows.slots s
            JOIN shadows.tasks t ON t.queue = s.queue AND t.key = s.task_key AND t.generation = s.generation
            WHERE s.queue = p_queue AND s.limit_key = k AND t.state = 'running' AND t.lease_expires_at > now()
        ) AS n
        FROM maxes WHERE m IS NOT NULL
    ), chosen AS (
        SELECT w.key FROM free f CROSS JOIN LATERAL (
            SELECT key FROM shadows.tasks
            WHERE queue = p_queue AND waiting_on = f.k AND state = 'scheduled'
            ORDER BY seq
            LIMIT greatest(f.n, 0)
        ) AS w
    )
    UPDATE shadows.tasks t SET waiting_on = NULL, waiting_max = NULL
    FROM chosen WHERE t.queue = p_queue AND t.key = chosen.key;
    GET DIAGNOSTICS v_woke = ROW_COUNT;
    IF v_woke > 0 THEN
        PERFORM pg_notify('shadows_ready', p_queue);
    END IF;
    RETURN v_woke;
END
$$;
-- +goose StatementEnd
CREATE OR REPLACE VIEW shadows.concurrency AS
SELECT s.queue, s.limit_key, count(*) AS running, max(s.max_slots) AS max_slots
FROM shadows.slots s
JOIN shadows.tasks t ON t.queue = s.queue AND t.key = s.task_key AND t.generation = s.generation
WHERE t.state = 'running' AND t.lease_expires_at > now()
GROUP BY s.queue, s.limit_key;
DELETE FROM shadows.slots s WHERE EXISTS (
    SELECT 1 FROM shadows.slots n
    WHERE n.queue = s.queue AND n.limit_key = s.limit_key AND n.task_key = s.task_key
      AND (n.generation, n.run_id) > (s.generation, s.run_id));
CREATE INDEX slots_holder ON shadows.slots (queue, task_key);
ALTER TABLE shadows.slots
    DROP CONSTRAINT slots_pkey,
    ADD PRIMARY KEY (queue, limit_key, task_key),
    DROP COLUMN lease_expires_at,
    DROP COLUMN run_id;
