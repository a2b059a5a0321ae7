-- +goose Up
-- The task key leaves the rows that change. A task's row is written again
-- when it is claimed and when it ends, and each new version goes into
-- every index of the table: with the primary key on (queue, key) that was
-- a text index entry, with its uniqueness check, twice per task. Rows are
-- now keyed by a bigint id, and shadows.task_keys maps each queue and key
-- to the id of its row: written when a key is first added and when its
-- row is deleted, never by a claim or an outcome.
-- Every statement that adds or deletes task rows keeps the two in step; a
-- key whose row is gone is treated as absent and is reused by the next add.
-- Old workers cannot run against this schema: stop them before migrating.
CREATE SEQUENCE shadows.task_ids;
ALTER TABLE shadows.tasks ADD COLUMN id bigint NOT NULL DEFAULT nextval('shadows.task_ids');
ALTER SEQUENCE shadows.task_ids OWNED BY shadows.tasks.id;
CREATE TABLE shadows.task_keys (
    queue text COLLATE "C" NOT NULL,
    key   text COLLATE "C" NOT NULL,
    id    bigint NOT NULL,
    PRIMARY KEY (queue, key)
);
INSERT INTO shadows.task_keys (queue, key, id) SELECT queue, key, id FROM shadows.tasks;
ALTER TABLE shadows.tasks DROP CONSTRAINT tasks_pkey;
ALTER TABLE shadows.tasks ADD CONSTRAINT tasks_pkey PRIMARY KEY (id);
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.acquire_slots(p_queue text, p_tasks text[], p_generations bigint[], p_started timestamp with time zone[], p_runs bigint[], p_keys text[], p_maxes integer[], p_lease_seconds double precision)
 RETURNS TABLE(parked_key text, parked_on text)
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET enable_bitmapscan TO 'off'
AS $function$
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
            LEFT JOIN shadows.task_keys kk ON kk.queue = p_queue AND kk.key = u.t
            LEFT JOIN shadows.tasks tk ON tk.id = kk.id
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
        WHERE t.id = ANY (ARRAY(SELECT kk.id FROM shadows.task_keys kk
                                WHERE kk.queue = p_queue AND kk.key = ANY (p_t)))
        ORDER BY t.key COLLATE "C"
        FOR UPDATE;
        UPDATE shadows.tasks t
        SET state = 'scheduled', waiting_on = u.k, waiting_max = u.m,
            worker = NULL, started_at = NULL, lease_expires_at = NULL,
            deliveries = greatest(t.deliveries - 1, 0)
        FROM unnest(p_t, p_k, p_m, p_g, p_s) AS u(t, k, m, g, s)
        JOIN shadows.task_keys kk ON kk.queue = p_queue AND kk.key = u.t
        -- Only the claimed run (generation and claim time): a superseded
        -- run parks nothing (its worker drops it), and never the run that
        -- replaced it, nor another worker's run of the key. A run
        -- cancelled since its claim is not parked either (parked, it would
        -- be woken and run): its worker drops it, and it ends cancelled
        -- when its lease lapses.
        WHERE t.id = kk.id AND t.generation = u.g AND t.started_at = u.s
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
$function$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.unclaim_runs(p_queue text, p_worker text, p_tasks text[], p_generations bigint[], p_started timestamp with time zone[], p_ttl_seconds double precision, p_keys text[], p_runs bigint[])
 RETURNS text[]
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET enable_bitmapscan TO 'off'
AS $function$
BEGIN
    PERFORM shadows.lock_keys(p_queue, p_keys);
    WITH mine AS (
        SELECT t.tid, t.cancel_requested
        FROM unnest(p_tasks, p_generations, p_started) AS u(key, generation, started_at)
        JOIN shadows.task_keys kk ON kk.queue = p_queue AND kk.key = u.key
        JOIN LATERAL (
            SELECT r.ctid AS tid, r.generation, r.started_at, r.state, r.worker, r.cancel_requested
            FROM shadows.tasks r
            WHERE r.id = kk.id
            LIMIT 1 -- a fence: the outer conditions stay out, only the primary key is used
            FOR UPDATE
        ) AS t ON true
        WHERE t.generation = u.generation AND t.started_at = u.started_at
          AND t.state = 'running' AND t.worker = p_worker
    ), cancelled AS (
        UPDATE shadows.tasks t
        SET state = 'cancelled', finished_at = coalesce(t.finished_at, now()), lease_expires_at = NULL,
            expires_at = now() + make_interval(secs => p_ttl_seconds)
        WHERE t.ctid = ANY (ARRAY(SELECT tid FROM mine WHERE cancel_requested))
    )
    UPDATE shadows.tasks t
    SET state = 'scheduled', worker = NULL, started_at = NULL, lease_expires_at = NULL,
        deliveries = greatest(t.deliveries - 1, 0)
    WHERE t.ctid = ANY (ARRAY(SELECT tid FROM mine WHERE NOT cancel_requested));
    RETURN shadows.release_slots(p_queue, p_keys, p_runs);
END
$function$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.wake_keys(p_queue text, p_keys text[])
 RETURNS integer
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET enable_bitmapscan TO 'off'
AS $function$
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
        SELECT w.id FROM free f CROSS JOIN LATERAL (
            SELECT id FROM shadows.tasks
            WHERE queue = p_queue AND waiting_on = f.k AND state = 'scheduled'
            ORDER BY seq
            LIMIT greatest(f.n, 0)
        ) AS w
    )
    UPDATE shadows.tasks t SET waiting_on = NULL, waiting_max = NULL
    WHERE t.id = ANY (ARRAY(SELECT id FROM chosen));
    GET DIAGNOSTICS v_woke = ROW_COUNT;
    IF v_woke > 0 THEN
        PERFORM pg_notify('shadows_ready', p_queue);
    END IF;
    RETURN v_woke;
END
$function$;
-- +goose StatementEnd
ANALYZE shadows.tasks;
ANALYZE shadows.task_keys;

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.acquire_slots(p_queue text, p_tasks text[], p_generations bigint[], p_started timestamp with time zone[], p_runs bigint[], p_keys text[], p_maxes integer[], p_lease_seconds double precision)
 RETURNS TABLE(parked_key text, parked_on text)
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET enable_bitmapscan TO 'off'
AS $function$
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
        ORDER BY t.key COLLATE "C"
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
$function$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.unclaim_runs(p_queue text, p_worker text, p_tasks text[], p_generations bigint[], p_started timestamp with time zone[], p_ttl_seconds double precision, p_keys text[], p_runs bigint[])
 RETURNS text[]
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET enable_bitmapscan TO 'off'
AS $function$
BEGIN
    PERFORM shadows.lock_keys(p_queue, p_keys);
    WITH mine AS (
        SELECT t.tid, t.cancel_requested
        FROM unnest(p_tasks, p_generations, p_started) AS u(key, generation, started_at)
        JOIN LATERAL (
            SELECT r.ctid AS tid, r.generation, r.started_at, r.state, r.worker, r.cancel_requested
            FROM shadows.tasks r
            WHERE r.queue = p_queue AND r.key = u.key
            LIMIT 1 -- a fence: the outer conditions stay out, only the primary key is used
            FOR UPDATE
        ) AS t ON true
        WHERE t.generation = u.generation AND t.started_at = u.started_at
          AND t.state = 'running' AND t.worker = p_worker
    ), cancelled AS (
        UPDATE shadows.tasks t
        SET state = 'cancelled', finished_at = coalesce(t.finished_at, now()), lease_expires_at = NULL,
            expires_at = now() + make_interval(secs => p_ttl_seconds)
        WHERE t.ctid = ANY (ARRAY(SELECT tid FROM mine WHERE cancel_requested))
    )
    UPDATE shadows.tasks t
    SET state = 'scheduled', worker = NULL, started_at = NULL, lease_expires_at = NULL,
        deliveries = greatest(t.deliveries - 1, 0)
    WHERE t.ctid = ANY (ARRAY(SELECT tid FROM mine WHERE NOT cancel_requested));
    RETURN shadows.release_slots(p_queue, p_keys, p_runs);
END
$function$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.wake_keys(p_queue text, p_keys text[])
 RETURNS integer
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET enable_bitmapscan TO 'off'
AS $function$
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
$function$;
-- +goose StatementEnd
ALTER TABLE shadows.tasks DROP CONSTRAINT tasks_pkey;
ALTER TABLE shadows.tasks ADD CONSTRAINT tasks_pkey PRIMARY KEY (queue, key);
DROP TABLE shadows.task_keys;
ALTER TABLE shadows.tasks DROP COLUMN id;
ANALYZE shadows.tasks;
