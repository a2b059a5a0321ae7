-- Strike rules: stored by the producer side, evaluated by the add and claim
-- queries.

-- name: InsertStrike :one
-- Returns whether the rule is new: striking twice is a no-op.
WITH ins AS (
    INSERT INTO shadows.strikes (queue, task, conditions, hold, rule)
    VALUES (@queue::text, sqlc.narg('task')::text, @conditions::jsonb, @hold::bool, @rule::text)
    ON CONFLICT (queue, rule) DO NOTHING
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM ins)::bool AS inserted;

-- name: DeleteStrike :one
-- Removes a rule. Removing a hold releases the tasks it kept waiting: they
-- are judged afresh at their next claim, against the rules that remain.
WITH removed AS (
    DELETE FROM shadows.strikes
    WHERE queue = @queue::text AND rule = @rule::text
    RETURNING hold
), released AS (
    UPDATE shadows.tasks SET held = false
    WHERE queue = @queue::text AND held AND EXISTS (SELECT 1 FROM removed WHERE hold)
    RETURNING 1
)
SELECT (SELECT count(*) FROM removed)::bigint AS removed,
    (SELECT count(*) FROM released)::bigint AS released,
    CASE WHEN EXISTS (SELECT 1 FROM released)
         THEN (SELECT true FROM pg_notify('shadows_ready', @queue::text))
         ELSE false END::bool AS notified;

-- name: ListStrikes :many
SELECT task, conditions, hold, rule, created_at
FROM shadows.strikes
WHERE queue = @queue::text
ORDER BY id;
