-- +goose Up
-- Hands back claimed runs whose concurrency slots could not be taken (the
-- request failed: a lost connection, a timeout, a deadlock), so they are
-- due again at once instead of after a whole redelivery timeout. One
-- function, called as one statement: it takes the keys' slot locks, and
-- those must not be held across the worker's round trips (a connection
-- lost mid-transaction would hold them until the server noticed). Taking
-- them first makes a request for the same slots still running on the
-- server (its cancel lost) finish before the hand-back looks: each
-- statement here sees what that request committed, and the slots it took
-- are released with the hand-back. A request that reaches the server only
-- after this can still take slots for a run handed back; those count until
-- their lease lapses.
--
-- Each run is touched only if it is still the claimed run (generation and
-- claim time) of this worker, found by primary key and locked in the order
-- given (the caller sorts by key). It becomes due as it was before its
-- claim, the delivery not counted; a run asked to cancel since its claim
-- ends cancelled at the cancel's time. Returns the released keys that
-- tasks wait on, as release_slots does.
-- +goose StatementBegin
CREATE FUNCTION shadows.unclaim_runs(p_queue text, p_worker text, p_tasks text[], p_generations bigint[],
                                     p_started timestamptz[], p_ttl_seconds float8,
                                     p_keys text[], p_runs bigint[])
RETURNS text[]
LANGUAGE plpgsql SET enable_seqscan = off AS $$
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
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION shadows.unclaim_runs(text, text, text[], bigint[], timestamptz[], float8, text[], bigint[]);
