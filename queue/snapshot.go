package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shadows-go/shadows/db"
)

// SnapshotLimit caps the tasks listed in each of a Snapshot's lists.
const SnapshotLimit = 1000

// Snapshot is a point-in-time view of a queue.
type Snapshot struct {
	// Taken is the database's clock when the snapshot was read.
	Taken time.Time
	// Total counts live tasks: queued, scheduled and running.
	Total int
	// Queued counts tasks that are due and wait for a worker.
	Queued int
	// Future lists tasks that have not started, queued or scheduled,
	// earliest first; at most SnapshotLimit of them.
	Future []TaskInfo
	// FutureCount counts all of them.
	FutureCount int
	// Running lists running tasks, longest-running first; at most
	// SnapshotLimit of them. A run cancelled while it ran is among them
	// (and in Total), though its Execution already reads cancelled, until
	// its worker records how it ended (soon after its handler returns; if
	// the worker died, when its lease lapses); once its key is added
	// again, the new task is counted instead.
	Running []TaskInfo
	// RunningCount counts all of them.
	RunningCount int
	// Waiting counts tasks waiting for a concurrency slot, and Held those a
	// hold strike keeps waiting; both are among Future.
	Waiting int
	Held    int
	// Workers lists the live workers.
	Workers []WorkerInfo
}

// TaskInfo describes one live task in a Snapshot.
type TaskInfo struct {
	Key     string
	Task    string
	When    time.Time
	Attempt int
	// Worker and Started are set for running tasks.
	Worker  string
	Started time.Time
}

// WorkerInfo describes a live worker.
type WorkerInfo struct {
	Name string
	// Tasks are the task names the worker can run.
	Tasks    []string
	Started  time.Time
	LastSeen time.Time
}

// Snapshot reads the queue's counts, its earliest pending tasks, its running
// tasks and its workers, all as of one moment (one read-only, repeatable
// read transaction: a task claimed meanwhile is not both pending and
// running).
func (q *Queue) Snapshot(ctx context.Context) (s *Snapshot, err error) {
	err = pgx.BeginTxFunc(ctx, q.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly},
		func(tx pgx.Tx) error {
			s, err = q.snapshot(ctx, tx)
			return err
		})
	return s, err
}

func (q *Queue) snapshot(ctx context.Context, tx pgx.Tx) (*Snapshot, error) {
	c, err := q.queries.CountTasks(ctx, tx, q.cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	s := &Snapshot{
		Taken:        c.Now,
		Total:        int(c.Total),
		Queued:       int(c.Due),
		FutureCount:  int(c.Pending),
		RunningCount: int(c.Running),
		Waiting:      int(c.Waiting),
		Held:         int(c.Held),
	}
	pending, err := q.queries.ListPending(ctx, tx, db.ListPendingParams{Queue: q.cfg.Name, MaxRows: SnapshotLimit})
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	for _, r := range pending {
		s.Future = append(s.Future, TaskInfo{Key: r.Key, Task: r.Task, When: r.RunAt, Attempt: int(r.Attempt)})
	}
	running, err := q.queries.ListRunning(ctx, tx, db.ListRunningParams{Queue: q.cfg.Name, MaxRows: SnapshotLimit})
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	for _, r := range running {
		t := TaskInfo{Key: r.Key, Task: r.Task, When: r.RunAt, Attempt: int(r.Attempt)}
		if r.Worker != nil {
			t.Worker = *r.Worker
		}
		if r.StartedAt != nil {
			t.Started = *r.StartedAt
		}
		s.Running = append(s.Running, t)
	}
	if s.Workers, err = q.workers(ctx, tx); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	return s, nil
}

// Clear removes every task that has not started, queued or scheduled, and
// returns how many it removed. Running tasks go on. With a record lifetime
// the removed tasks keep a cancelled record.
func (q *Queue) Clear(ctx context.Context) (int, error) {
	row, err := q.queries.ClearTasks(ctx, q.pool, db.ClearTasksParams{Queue: q.cfg.Name, TtlSeconds: q.ttlSeconds()})
	if err != nil {
		return 0, fmt.Errorf("clear: %w", err)
	}
	return int(row.N), nil
}

// Workers lists the workers that sent a heartbeat within HeartbeatInterval ×
// MissedHeartbeats.
func (q *Queue) Workers(ctx context.Context) ([]WorkerInfo, error) {
	return q.workers(ctx, q.pool)
}

func (q *Queue) workers(ctx context.Context, conn db.DBTX) ([]WorkerInfo, error) {
	rows, err := q.queries.ListWorkers(ctx, conn, db.ListWorkersParams{
		Queue:        q.cfg.Name,
		StaleSeconds: q.WorkerStaleAfter().Seconds(),
	})
	if err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	out := make([]WorkerInfo, 0, len(rows))
	for _, r := range rows {
		out = append(out, WorkerInfo{Name: r.Name, Tasks: r.Tasks, Started: r.StartedAt, LastSeen: r.LastSeen})
	}
	return out, nil
}

// TaskWorkers lists the live workers that can run the named task.
func (q *Queue) TaskWorkers(ctx context.Context, task string) ([]WorkerInfo, error) {
	all, err := q.Workers(ctx)
	if err != nil {
		return nil, err
	}
	var out []WorkerInfo
	for _, w := range all {
		for _, t := range w.Tasks {
			if t == task {
				out = append(out, w)
				break
			}
		}
	}
	return out, nil
}

// WorkerStaleAfter is how long after its last heartbeat a worker stops being
// listed.
func (q *Queue) WorkerStaleAfter() time.Duration {
	return q.cfg.HeartbeatInterval * time.Duration(q.cfg.MissedHeartbeats)
}

// TaskStats counts a task name's live tasks.
type TaskStats struct {
	Task      string
	Total     int
	Running   int
	Queued    int
	Scheduled int
	// Oldest and Newest are the earliest and latest due times.
	Oldest time.Time
	Newest time.Time
}

// TaskStats counts the queue's live tasks per task name, most numerous
// first.
func (q *Queue) TaskStats(ctx context.Context) ([]TaskStats, error) {
	rows, err := q.queries.TaskStats(ctx, q.pool, q.cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("task stats: %w", err)
	}
	out := make([]TaskStats, 0, len(rows))
	for _, r := range rows {
		out = append(out, TaskStats{
			Task: r.Task, Total: int(r.Total), Running: int(r.Running), Queued: int(r.Queued),
			Scheduled: int(r.Scheduled), Oldest: r.Oldest, Newest: r.Newest,
		})
	}
	return out, nil
}
