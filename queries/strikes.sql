-- Strike rules: stored by the producer side, evaluated by the add and claim
-- queries.

-- name: InsertStrike :one
-- Returns whether the rule is new: striking twice is a no-op. A new rule
-- bumps the queue's strike epoch, so claims judge pending tasks afresh.
WITH ins AS (
    INSERT INTO shadows.strikes (queue, task, path, hold, rule)
    VALUES (@queue::text, sqlc.narg('task')::text, CAST(@path::text AS jsonpath), @hold::bool, @rule::text)
    ON CONFLICT (queue, rule) DO NOTHING
    RETURNING id
), bumped AS (
    INSERT INTO shadows.strike_epochs AS e (queue, epoch)
    SELECT @queue::text, 1 WHERE EXISTS (SELECT 1 FROM ins)
    ON CONFLICT (queue) DO UPDATE SET epoch = e.epoch + 1
)
SELECT EXISTS (SELECT 1 FROM ins)::bool AS inserted;

-- name: DeleteStrike :one
-- Removes a rule and bumps the queue's strike epoch. Removing a hold
-- releases the tasks it kept waiting: they are judged afresh at their next
-- claim, against the rules that remain.
WITH removed AS (
    DELETE FROM shadows.strikes
    WHERE queue = @queue::text AND rule = @rule::text
    RETURNING hold
), bumped AS (
    INSERT INTO shadows.strike_epochs AS e (queue, epoch)
    SELECT @queue::text, 1 WHERE EXISTS (SELECT 1 FROM removed)
    ON CONFLICT (queue) DO UPDATE SET epoch = e.epoch + 1
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
SELECT task, hold, rule, created_at
FROM shadows.strikes
WHERE queue = @queue::text
ORDER BY id;
