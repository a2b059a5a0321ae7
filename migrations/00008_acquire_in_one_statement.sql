-- +goose Up
-- acquire_slots decides the common batch in one statement. Nearly every
-- batch asks for keys that all have room and that nobody waits on; that
-- batch used to pay for the whole procedure's bookkeeping (an index of its
-- keys, arrays of counts) before reaching the insert. Now one statement
-- counts the batch's keys, checks for waiters and inserts every slot, and
-- only a batch it cannot grant whole goes on to the task-by-task decision,
-- which keeps its old body under a new name.
ALTER FUNCTION shadows.acquire_slots(text, text[], bigint[], text[], integer[])
    RENAME TO acquire_slots_in_order;

-- +goose StatementBegin
CREATE FUNCTION shadows.acquire_slots(p_queue text, p_tasks text[], p_generations bigint[],
                                      p_keys text[], p_maxes integer[])
RETURNS TABLE (parked_key text, parked_on text)
LANGUAGE plpgsql AS $$
DECLARE
    v_granted boolean;
BEGIN
    PERFORM shadows.lock_keys(p_queue, p_keys);
    -- Raw slot counts (a dead holder's slot still counts here): a batch
    -- that only fits once dead holders are left out is decided in order.
    WITH asked AS (
        SELECT u.t, u.g, u.k, u.m FROM unnest(p_tasks, p_generations, p_keys, p_maxes) AS u(t, g, k, m)
    ), demand AS (
        SELECT k, count(*) AS n, min(m) AS m FROM asked GROUP BY k
    ), asking AS (
        SELECT DISTINCT t FROM asked
    ), held AS (
        -- Slots of the batch's keys held by other tasks (a redelivered task
        -- keeps the slot it had), the asking tasks left out by a hash
        -- anti-join.
        SELECT s.limit_key AS k, count(*) AS n FROM shadows.slots s
        LEFT JOIN asking ON asking.t = s.task_key
        WHERE s.queue = p_queue AND s.limit_key IN (SELECT k FROM demand) AND asking.t IS NULL
        GROUP BY s.limit_key
    ), blocked AS (
        SELECT 1 FROM demand LEFT JOIN held ON held.k = demand.k
        WHERE coalesce(held.n, 0) + demand.n > demand.m
        UNION ALL
        (SELECT 1 FROM shadows.tasks
         WHERE queue = p_queue AND state = 'scheduled' AND waiting_on IN (SELECT k FROM demand)
         LIMIT 1)
    ), granted AS (
        INSERT INTO shadows.slots (queue, limit_key, task_key, generation, max_slots)
        SELECT p_queue, asked.k, asked.t, asked.g, asked.m FROM asked
        WHERE NOT EXISTS (SELECT 1 FROM blocked)
        ON CONFLICT (queue, limit_key, task_key) DO UPDATE
        SET generation = excluded.generation, max_slots = excluded.max_slots, acquired_at = now()
        -- A run superseded by a replace never takes over the slot of the
        -- run that replaced it.
        WHERE shadows.slots.generation <= excluded.generation
    )
    SELECT NOT EXISTS (SELECT 1 FROM blocked) INTO v_granted;
    IF v_granted THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM shadows.acquire_slots_in_order(p_queue, p_tasks, p_generations, p_keys, p_maxes);
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION shadows.acquire_slots(text, text[], bigint[], text[], integer[]);
ALTER FUNCTION shadows.acquire_slots_in_order(text, text[], bigint[], text[], integer[])
    RENAME TO acquire_slots;
