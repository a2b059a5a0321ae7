-- +goose Up
-- The common admission, decided in two statements. Nearly every batch of
-- limited runs finds room on all of its keys and nobody waiting on them;
-- acquire_slots still built its per-key bookkeeping (a sorted key list, a
-- jsonb index, counts one statement per key) and inserted with ON CONFLICT
-- for such batches, which cost about as much as the slot rows themselves
-- (pg_stat_statements with track = all over the bench's limits burn:
-- 15.7 µs per slot in acquire_slots, of which 7.4 µs the insert and
-- 3.0 µs the bookkeeping). take_slots checks every key of the batch in one
-- statement and, when all have room and no waiters, inserts the slots
-- plainly (run ids are drawn anew for every run and each run asks once, so
-- they cannot conflict); any other batch goes to acquire_slots, unchanged.
-- Same arguments and result as acquire_slots. release_slots no longer
-- locks each slot before deleting it (below). That and a waiters probe per
-- key only when the queue has waiters cut slot work per limited run by
-- about a sixth more (track_functions over the limits burn, three fresh
-- databases each: take_slots 10.5–13.9 µs against 11.8–14.5,
-- release_slots 5.0–6.7 µs against 6.4–8.2).
-- +goose StatementBegin
CREATE FUNCTION shadows.take_slots(p_queue text, p_tasks text[], p_generations bigint[],
                                   p_started timestamptz[], p_runs bigint[],
                                   p_keys text[], p_maxes integer[], p_lease_seconds float8)
RETURNS TABLE (parked_key text, parked_on text)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
BEGIN
    PERFORM shadows.lock_keys(p_queue, p_keys);
    -- One probe of the slots' primary key per key of the batch, and of the
    -- waiters index per key only when some task of the queue waits at all.
    IF NOT EXISTS (
        SELECT 1
        FROM (SELECT u.k, count(*) AS n, min(u.m) AS m FROM unnest(p_keys, p_maxes) AS u(k, m) GROUP BY u.k) AS d
        WHERE d.n + (SELECT count(*) FROM shadows.slots s
                     WHERE s.queue = p_queue AND s.limit_key = d.k AND s.lease_expires_at > now()) > d.m
    ) AND NOT (
        EXISTS (SELECT 1 FROM shadows.tasks w
                WHERE w.queue = p_queue AND w.state = 'scheduled' AND w.waiting_on IS NOT NULL)
        AND EXISTS (SELECT 1 FROM unnest(p_keys) AS k
                    WHERE EXISTS (SELECT 1 FROM shadows.tasks w
                                  WHERE w.queue = p_queue AND w.waiting_on = k AND w.state = 'scheduled'))
    ) THEN
        INSERT INTO shadows.slots (queue, limit_key, run_id, task_key, generation, max_slots, lease_expires_at)
        SELECT p_queue, u.k, u.r, u.t, u.g, u.m, now() + make_interval(secs => p_lease_seconds)
        FROM unnest(p_tasks, p_generations, p_runs, p_keys, p_maxes) AS u(t, g, r, k, m);
        RETURN;
    END IF;
    -- The keys stay locked (advisory locks of one transaction nest).
    RETURN QUERY SELECT * FROM shadows.acquire_slots(p_queue, p_tasks, p_generations, p_started, p_runs,
                                                     p_keys, p_maxes, p_lease_seconds);
END
$$;
-- +goose StatementEnd

-- Frees the slots of runs that ended, as before, without locking each slot
-- before deleting it: a slot row is written only by its own worker
-- (which serialises renewals with its outcome batches) and by the sweep,
-- which skips locked rows and deletes only lapsed ones, so the lock bought
-- nothing but a second write per slot. A slot the sweep deleted meanwhile
-- is simply not deleted again (the row found stays the statement's to see:
-- its place cannot be reused while the statement runs).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.release_slots(p_queue text, p_keys text[], p_runs bigint[])
RETURNS text[]
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_waiting text[];
BEGIN
    DELETE FROM shadows.slots s
    WHERE s.ctid = ANY (ARRAY(
        SELECT x.tid FROM unnest(p_keys, p_runs) AS u(k, r)
        CROSS JOIN LATERAL (
            SELECT h.ctid AS tid FROM shadows.slots h
            WHERE h.queue = p_queue AND h.limit_key = u.k AND h.run_id = u.r
            LIMIT 1 -- a fence: looked up one by one, by the primary key
        ) AS x));
    SELECT array_agg(DISTINCT waiting_on) INTO v_waiting FROM shadows.tasks
    WHERE queue = p_queue AND state = 'scheduled' AND waiting_on = ANY (p_keys);
    RETURN coalesce(v_waiting, '{}');
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION shadows.take_slots(text, text[], bigint[], timestamptz[], bigint[], text[], integer[], float8);
-- release_slots as in 00009: each slot locked, then deleted.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION shadows.release_slots(p_queue text, p_keys text[], p_runs bigint[])
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
