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

-- Live holders of one key, other than the task asking.
-- +goose StatementBegin
CREATE FUNCTION shadows.slot_holders(p_queue text, p_key text, p_except text) RETURNS bigint
LANGUAGE sql STABLE AS $$
SELECT count(*)
FROM shadows.slots s
JOIN shadows.tasks t ON t.queue = s.queue AND t.key = s.task_key AND t.generation = s.generation
WHERE s.queue = p_queue AND s.limit_key = p_key AND s.task_key <> p_except
  AND t.state = 'running' AND t.lease_expires_at > now()
$$;
-- +goose StatementEnd

-- Wakes, oldest first, as many tasks waiting on p_key as it has free slots,
-- and returns how many it woke. The caller holds the key's lock.
-- +goose StatementBegin
CREATE FUNCTION shadows.wake_key(p_queue text, p_key text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_max  integer;
    v_free bigint;
    v_woke integer;
BEGIN
    SELECT max(m) INTO v_max FROM (
        SELECT max(max_slots) AS m FROM shadows.slots WHERE queue = p_queue AND limit_key = p_key
        UNION ALL
        SELECT max(waiting_max) FROM shadows.tasks
        WHERE queue = p_queue AND waiting_on = p_key AND state = 'scheduled'
    ) AS maxes;
    IF v_max IS NULL THEN
        RETURN 0;
    END IF;
    v_free := v_max - shadows.slot_holders(p_queue, p_key, '');
    IF v_free <= 0 THEN
        RETURN 0;
    END IF;
    UPDATE shadows.tasks SET waiting_on = NULL, waiting_max = NULL
    WHERE queue = p_queue AND key IN (
        SELECT key FROM shadows.tasks
        WHERE queue = p_queue AND waiting_on = p_key AND state = 'scheduled'
        ORDER BY seq
        LIMIT v_free
    );
    GET DIAGNOSTICS v_woke = ROW_COUNT;
    RETURN v_woke;
END
$$;
-- +goose StatementEnd

-- Takes slots for claimed (running) tasks, in the order they were due. Each row of
-- the input is one limit of one task: p_tasks[i] (claimed at generation
-- p_generations[i]) needs a slot of p_keys[i], of which at most p_maxes[i]
-- may be held. A task gets all of its slots or none: if any of its keys is
-- full, or older tasks already wait on it, the task is parked on that key
-- (back to scheduled, the claim undone, no attempt spent) and its key is
-- returned. Keys are locked in sorted order, so concurrent callers never
-- deadlock.
-- +goose StatementBegin
CREATE FUNCTION shadows.acquire_slots(p_queue text, p_tasks text[], p_generations bigint[],
                                      p_keys text[], p_maxes integer[])
RETURNS TABLE (parked_key text, parked_on text)
LANGUAGE plpgsql AS $$
DECLARE
    v_key     text;
    v_task    text;
    v_seq     bigint;
    v_blocked text;
    v_max     integer;
BEGIN
    FOR v_key IN SELECT DISTINCT k FROM unnest(p_keys) AS k ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(p_queue || '/' || v_key, 0));
    END LOOP;
    -- First come, first served: tasks in the order they were due.
    FOR v_task, v_seq IN
        SELECT key, seq FROM shadows.tasks
        WHERE queue = p_queue AND key = ANY (p_tasks)
        ORDER BY run_at, seq
    LOOP
        v_blocked := NULL;
        FOR v_key, v_max IN
            SELECT k, m FROM unnest(p_tasks, p_keys, p_maxes) AS u(t, k, m) WHERE t = v_task ORDER BY k
        LOOP
            IF shadows.slot_holders(p_queue, v_key, v_task) >= v_max
               OR EXISTS (SELECT 1 FROM shadows.tasks
                          WHERE queue = p_queue AND waiting_on = v_key AND state = 'scheduled' AND seq < v_seq)
            THEN
                v_blocked := v_key;
                EXIT;
            END IF;
        END LOOP;
        IF v_blocked IS NULL THEN
            INSERT INTO shadows.slots (queue, limit_key, task_key, generation, max_slots)
            SELECT p_queue, k, v_task, g, m
            FROM unnest(p_tasks, p_generations, p_keys, p_maxes) AS u(t, g, k, m) WHERE t = v_task
            ON CONFLICT (queue, limit_key, task_key) DO UPDATE
            SET generation = excluded.generation, max_slots = excluded.max_slots, acquired_at = now();
        ELSE
            SELECT m INTO v_max FROM unnest(p_tasks, p_keys, p_maxes) AS u(t, k, m)
            WHERE t = v_task AND k = v_blocked;
            UPDATE shadows.tasks
            SET state = 'scheduled', waiting_on = v_blocked, waiting_max = v_max,
                worker = NULL, started_at = NULL, lease_expires_at = NULL,
                deliveries = greatest(deliveries - 1, 0)
            WHERE queue = p_queue AND key = v_task AND state = 'running';
            parked_key := v_task;
            parked_on := v_blocked;
            RETURN NEXT;
        END IF;
    END LOOP;
    -- Tasks parked behind older waiters while slots were free: wake those
    -- waiters rather than leave them to the backstop.
    FOR v_key IN SELECT DISTINCT k FROM unnest(p_keys) AS k ORDER BY 1 LOOP
        IF shadows.wake_key(p_queue, v_key) > 0 THEN
            PERFORM pg_notify('shadows_ready', p_queue);
        END IF;
    END LOOP;
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
    v_key  text;
    v_woke integer := 0;
BEGIN
    FOR v_key IN
        SELECT DISTINCT s.limit_key FROM shadows.slots s
        JOIN unnest(p_tasks, p_generations) AS u(t, g) ON s.task_key = u.t AND s.generation = u.g
        WHERE s.queue = p_queue
        ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(p_queue || '/' || v_key, 0));
    END LOOP;
    FOR v_key IN
        WITH freed AS (
            DELETE FROM shadows.slots s
            USING unnest(p_tasks, p_generations) AS u(t, g)
            WHERE s.queue = p_queue AND s.task_key = u.t AND s.generation = u.g
            RETURNING s.limit_key
        )
        SELECT DISTINCT limit_key FROM freed ORDER BY 1
    LOOP
        v_woke := v_woke + shadows.wake_key(p_queue, v_key);
    END LOOP;
    IF v_woke > 0 THEN
        PERFORM pg_notify('shadows_ready', p_queue);
    END IF;
    RETURN v_woke;
END
$$;
-- +goose StatementEnd

-- The backstop for waiters whose slots freed without a release: a holder
-- whose worker died (its lease lapsed), or whose release was lost in a
-- crash. Wakes what capacity allows on every key with waiters, and drops
-- slots whose holder no longer runs.
-- +goose StatementBegin
CREATE FUNCTION shadows.wake_waiters(p_queue text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_key  text;
    v_woke integer := 0;
BEGIN
    FOR v_key IN
        SELECT DISTINCT waiting_on FROM shadows.tasks
        WHERE queue = p_queue AND state = 'scheduled' AND waiting_on IS NOT NULL
        ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended(p_queue || '/' || v_key, 0));
        DELETE FROM shadows.slots s
        WHERE s.queue = p_queue AND s.limit_key = v_key AND NOT EXISTS (
            SELECT 1 FROM shadows.tasks t
            WHERE t.queue = s.queue AND t.key = s.task_key AND t.generation = s.generation
              AND t.state = 'running');
        v_woke := v_woke + shadows.wake_key(p_queue, v_key);
    END LOOP;
    IF v_woke > 0 THEN
        PERFORM pg_notify('shadows_ready', p_queue);
    END IF;
    RETURN v_woke;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION shadows.wake_waiters(text);
DROP FUNCTION shadows.release_slots(text, text[], bigint[]);
DROP FUNCTION shadows.acquire_slots(text, text[], bigint[], text[], integer[]);
DROP FUNCTION shadows.wake_key(text, text);
DROP FUNCTION shadows.slot_holders(text, text, text);
DROP VIEW shadows.concurrency;
CREATE INDEX tasks_ready ON shadows.tasks (queue, run_at, seq) WHERE state = 'scheduled' AND NOT held;
DROP INDEX shadows.tasks_claimable;
DROP INDEX shadows.tasks_waiting;
ALTER TABLE shadows.tasks DROP COLUMN waiting_on, DROP COLUMN waiting_max;
DROP TABLE shadows.slots;
