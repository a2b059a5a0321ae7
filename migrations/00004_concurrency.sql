-- +goose Up
-- Concurrency limits. A task whose policy limits it per argument value (or
-- as a whole) holds one slot per limit while it runs. A task that finds a
-- limit full is parked: it leaves the claim index, waiting on that limit's
-- key, and is woken first-come-first-served when a slot frees. Nothing polls.

-- The slots held by running tasks. A slot counts only while its holder runs
-- under a live lease, so the slots of a worker that died free themselves
-- when its lease lapses.
CREATE TABLE shadows.slots (
    queue      text        NOT NULL,
    limit_key  text        NOT NULL,
    task_key   text        NOT NULL,
    generation bigint      NOT NULL,
    max_slots  integer     NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, limit_key, task_key)
);
CREATE INDEX slots_holder ON shadows.slots (queue, task_key);

-- A parked task waits on one limit key, with that limit's maximum.
ALTER TABLE shadows.tasks
    ADD COLUMN waiting_on  text,
    ADD COLUMN waiting_max integer;

-- Only tasks that can be claimed stay in the claim index.
CREATE INDEX tasks_claimable ON shadows.tasks (queue, run_at, seq)
    WHERE state = 'scheduled' AND NOT held AND waiting_on IS NULL;
DROP INDEX shadows.tasks_ready;

-- Waiters by key, in arrival order.
CREATE INDEX tasks_waiting ON shadows.tasks (queue, waiting_on, seq)
    WHERE state = 'scheduled' AND waiting_on IS NOT NULL;

-- The live holders of each limit key: what "how many tasks run for customer
-- 1001" is asked of.
CREATE VIEW shadows.concurrency AS
SELECT s.queue, s.limit_key, count(*) AS running, max(s.max_slots) AS max_slots
FROM shadows.slots s
JOIN shadows.tasks t ON t.queue = s.queue AND t.key = s.task_key AND t.generation = s.generation
WHERE t.state = 'running' AND t.lease_expires_at > now()
GROUP BY s.queue, s.limit_key;

-- Wakes, on keys whose locks the caller holds, as many waiting tasks as
-- each key has free slots, oldest first, and returns how many it woke.
-- +goose StatementBegin
CREATE FUNCTION shadows.wake_keys(p_queue text, p_keys text[]) RETURNS integer
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

-- Locks the given limit keys, in sorted order so that concurrent callers
-- never deadlock, for the rest of the transaction.
-- +goose StatementBegin
CREATE FUNCTION shadows.lock_keys(p_queue text, p_keys text[]) RETURNS void
LANGUAGE sql AS $$
SELECT count(pg_advisory_xact_lock(hashtextextended(p_queue || '/' || k, 0)))
FROM (SELECT DISTINCT k FROM unnest(p_keys) AS k ORDER BY 1) AS keys;
$$;
-- +goose StatementEnd

-- Takes slots for claimed (running) tasks. Each row of the input is one
-- limit of one task: p_tasks[i] (claimed at generation p_generations[i])
-- needs a slot of p_keys[i], of which at most p_maxes[i] may be held. Tasks
-- are served in the order they were due; a task gets all of its slots or
-- none: if any of its keys is full, or older tasks already wait on it, the
-- task is parked on that key (back to scheduled, the claim undone, no
-- attempt spent) and returned. The whole batch is decided with a handful of
-- statements, whatever its size.
-- +goose StatementBegin
CREATE FUNCTION shadows.acquire_slots(p_queue text, p_tasks text[], p_generations bigint[],
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

-- Frees the slots of tasks that ended (p_tasks at p_generations) and wakes
-- waiters on the keys that freed up. Returns how many tasks it woke.
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

-- The backstop for waiters whose slots freed without a release: a holder
-- whose worker died (its lease lapsed), or whose release was lost in a
-- crash. Drops slots whose holder no longer runs and wakes what capacity
-- allows on every key with waiters.
-- +goose StatementBegin
CREATE FUNCTION shadows.wake_waiters(p_queue text) RETURNS integer
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

-- +goose Down
DROP FUNCTION shadows.wake_waiters(text);
DROP FUNCTION shadows.release_slots(text, text[], bigint[]);
DROP FUNCTION shadows.acquire_slots(text, text[], bigint[], text[], integer[]);
DROP FUNCTION shadows.lock_keys(text, text[]);
DROP FUNCTION shadows.wake_keys(text, text[]);
DROP VIEW shadows.concurrency;
CREATE INDEX tasks_ready ON shadows.tasks (queue, run_at, seq) WHERE state = 'scheduled' AND NOT held;
DROP INDEX shadows.tasks_claimable;
DROP INDEX shadows.tasks_waiting;
ALTER TABLE shadows.tasks DROP COLUMN waiting_on, DROP COLUMN waiting_max;
DROP TABLE shadows.slots;
