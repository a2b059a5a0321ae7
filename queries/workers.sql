-- Worker registry: heartbeats and listing.

-- name: Heartbeat :exec
INSERT INTO shadows.workers (queue, name, tasks, started_at, last_seen)
VALUES (@queue, @name, @tasks::text[], now(), now())
ON CONFLICT (queue, name) DO UPDATE SET tasks = excluded.tasks, last_seen = now();

-- name: RemoveWorker :exec
DELETE FROM shadows.workers WHERE queue = @queue::text AND name = @name;

-- name: ListWorkers :many
SELECT name, tasks, started_at, last_seen
FROM shadows.workers
WHERE queue = @queue::text
  AND last_seen > now() - make_interval(secs => @stale_seconds::float8)
ORDER BY name;

-- name: DeleteStaleWorkers :execrows
-- Each queue's own: queues may announce themselves at different intervals.
DELETE FROM shadows.workers
WHERE queue = @queue::text AND last_seen < now() - make_interval(secs => @stale_seconds::float8);
