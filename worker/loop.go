package worker

import (
	"context"
	"sync"
	"time"

	"github.com/shadows-go/shadows/db"
)

// claimLoop claims due tasks while there are free slots and starts each in
// its own goroutine, until ctx is cancelled or, with untilFinished, the
// queue has nothing left to run. It never waits on a running task.
func (w *Worker) claimLoop(ctx context.Context, untilFinished bool, tasks *sync.WaitGroup) {
	poll := time.NewTimer(0)
	defer poll.Stop()
	var (
		failures  int
		lastSweep time.Time
		backlog   bool // the last claim filled every free slot
	)
	for ctx.Err() == nil {
		free := w.cfg.Concurrency - int(w.running.Load())
		if w.done.backlogged() {
			// Outcomes are ended faster than they are recorded: claim
			// nothing more until the finisher catches up.
			free = 0
		}
		if free > 0 {
			sweep := time.Since(lastSweep) >= w.sweepInterval()
			n, err := w.claim(ctx, free, sweep, tasks)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				w.logger.Warn("claim tasks failed; retrying", "error", err, "attempt", failures+1)
				if !sleep(ctx, w.backoff(failures)) {
					return
				}
				failures++
				continue
			}
			if failures > 0 {
				w.logger.Info("claiming tasks again")
				failures = 0
			}
			if sweep {
				lastSweep = time.Now()
			}
			backlog = n == free
		}
		if backlog {
			// More is due: wait only for slots to free. Let a few free up
			// first when many are busy, so claims come in batches.
			if !w.waitForSlots(ctx) {
				return
			}
			continue
		}
		if untilFinished && w.running.Load() == 0 && w.done.idle() {
			live, err := w.queries.HasLiveTasks(ctx, w.pool, w.q.Name())
			if err == nil && !live {
				return
			}
		}
		resetTimer(poll, w.idleWait(ctx))
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		case <-w.slotFreed:
		case <-poll.C:
		}
	}
}

// waitForSlots blocks until enough slots are free to claim a batch worth the
// round trip: a quarter of the concurrency (at most 100), or whatever is
// free 2ms after the first slot frees.
func (w *Worker) waitForSlots(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return false
	case <-w.slotFreed:
	}
	want := int64(min(max(w.cfg.Concurrency/4, 1), 100))
	deadline := time.NewTimer(2 * time.Millisecond)
	defer deadline.Stop()
	for int64(w.cfg.Concurrency)-w.running.Load() < want {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return true
		case <-w.slotFreed:
		}
	}
	return true
}

// idleWait is how long an idle worker sleeps: until the next future task is
// due (rounded up to the scheduling resolution), at most CheckInterval.
func (w *Worker) idleWait(ctx context.Context) time.Duration {
	wait := w.cfg.CheckInterval
	next, err := w.queries.NextDue(ctx, w.pool, w.q.Name())
	if err != nil {
		return wait // none scheduled, or the database is away: poll
	}
	until := time.Until(next)
	res := w.cfg.SchedulingResolution
	until = (until + res - 1) / res * res
	return max(min(wait, until), 0)
}

func resetTimer(t *time.Timer, d time.Duration) {
	t.Stop()
	select {
	case <-t.C:
	default:
	}
	t.Reset(d)
}

// claim takes up to free due tasks (and, when sweep is set, tasks whose
// lease lapsed) and starts them. It returns how many it started.
func (w *Worker) claim(ctx context.Context, free int, sweep bool, tasks *sync.WaitGroup) (int, error) {
	var claimed []*execution
	if sweep {
		rows, err := w.queries.ClaimLapsed(ctx, w.pool, db.ClaimLapsedParams{
			Queue: w.q.Name(), Worker: w.cfg.Name, MaxRows: int32(free), LeaseSeconds: w.leaseSeconds(), TtlSeconds: w.ttlSeconds(),
		})
		if err != nil {
			return 0, err
		}
		for _, r := range rows {
			claimed = append(claimed, w.newExecution(db.ClaimDueRow(r)))
		}
	}
	if left := free - len(claimed); left > 0 {
		rows, err := w.queries.ClaimDue(ctx, w.pool, db.ClaimDueParams{
			Queue: w.q.Name(), Worker: w.cfg.Name, MaxRows: int32(left), LeaseSeconds: w.leaseSeconds(),
		})
		if err != nil {
			w.startAll(claimed, tasks) // already claimed: run them
			return len(claimed), err
		}
		for _, r := range rows {
			claimed = append(claimed, w.newExecution(r))
		}
	}
	w.startAll(claimed, tasks)
	return len(claimed), nil
}

func (w *Worker) newExecution(r db.ClaimDueRow) *execution {
	x := &execution{
		Info: Info{
			Key:         r.Key,
			Name:        r.Task,
			Attempt:     int(r.Attempt),
			When:        r.RunAt,
			Redelivered: r.Deliveries > 1,
			Worker:      w.cfg.Name,
			Queue:       w.q,
		},
		args:       r.Args,
		generation: r.Generation,
		w:          w,
	}
	if r.StartedAt != nil {
		x.started = *r.StartedAt
	}
	return x
}

// startAll registers every claimed task as in flight before starting any,
// so a cancel notification that follows the claim always finds its task.
func (w *Worker) startAll(claimed []*execution, tasks *sync.WaitGroup) {
	if len(claimed) == 0 {
		return
	}
	runs := make([]*inflight, len(claimed))
	for i, x := range claimed {
		runs[i] = w.inflight.add(x)
	}
	w.running.Add(int64(len(claimed)))
	for _, f := range runs {
		tasks.Go(func() {
			defer func() {
				w.running.Add(-1)
				signal(w.slotFreed)
			}()
			w.execute(f)
		})
	}
}
