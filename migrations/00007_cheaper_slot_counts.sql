-- +goose Up
-- acquire_slots, cheaper for batches of hundreds of tasks with the same
-- decisions: the slots of a batch's keys are counted without checking every
-- holder's liveness (only keys near their limit are recounted with the
-- join), the asking tasks are excluded with a hash anti-join, and a batch
-- whose keys all have room and no waiters is granted with one insert,
-- without deciding task by task. A run superseded by a replace (its
-- generation moved on while it was being claimed) can no longer park the
-- run that replaced it, nor take over that run's slot.
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

-- +goose Down
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
    FOR r IN
        SELECT s.limit_key AS k, count(*) AS n FROM shadows.slots s
        JOIN shadows.tasks t ON t.queue = s.queue AND t.key = s.task_key AND t.generation = s.generation
        WHERE s.queue = p_queue AND s.limit_key = ANY (v_keys) AND s.task_key <> ALL (p_tasks)
          AND t.state = 'running' AND t.lease_expires_at > now()
        GROUP BY s.limit_key
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
    SET generation = excluded.generation, max_slots = excluded.max_slots, acquired_at = now();

    IF array_length(p_t, 1) > 0 THEN
        UPDATE shadows.tasks t
        SET state = 'scheduled', waiting_on = u.k, waiting_max = u.m,
            worker = NULL, started_at = NULL, lease_expires_at = NULL,
            deliveries = greatest(t.deliveries - 1, 0)
        FROM unnest(p_t, p_k, p_m) AS u(t, k, m)
        WHERE t.queue = p_queue AND t.key = u.t AND t.state = 'running';
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
