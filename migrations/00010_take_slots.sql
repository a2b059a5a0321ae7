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
-- Same arguments and result as acquire_slots.
-- +goose StatementBegin
CREATE FUNCTION shadows.take_slots(p_queue text, p_tasks text[], p_generations bigint[],
                                   p_started timestamptz[], p_runs bigint[],
                                   p_keys text[], p_maxes integer[], p_lease_seconds float8)
RETURNS TABLE (parked_key text, parked_on text)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
BEGIN
    PERFORM shadows.lock_keys(p_queue, p_keys);
    -- Each key: one probe of the waiters index and one of the slots'
    -- primary key.
    IF NOT EXISTS (
        SELECT 1
        FROM (SELECT u.k, count(*) AS n, min(u.m) AS m FROM unnest(p_keys, p_maxes) AS u(k, m) GROUP BY u.k) AS d
        WHERE EXISTS (SELECT 1 FROM shadows.tasks w
                      WHERE w.queue = p_queue AND w.waiting_on = d.k AND w.state = 'scheduled')
           OR d.n + (SELECT count(*) FROM shadows.slots s
                     WHERE s.queue = p_queue AND s.limit_key = d.k AND s.lease_expires_at > now()) > d.m
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

-- +goose Down
DROP FUNCTION shadows.take_slots(text, text[], bigint[], timestamptz[], bigint[], text[], integer[], float8);
