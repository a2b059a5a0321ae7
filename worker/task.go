package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/shadows-go/shadows/db"
	"github.com/shadows-go/shadows/queue"
)

// Info is a running task's view of itself (docket's TaskKey, CurrentExecution,
// CurrentDocket, CurrentWorker and TaskLogger in one). Handlers get it in
// their Task; code deeper down gets it from the context with InfoFrom.
type Info struct {
	// Key is the task's key.
	Key string
	// Name is the task name it was added under.
	Name string
	// Attempt counts runs of this task, from 1; retries increase it.
	Attempt int
	// Attempts is how many runs the retry policy allows in all, RetryForever
	// for no limit (1 when the task is not retried).
	Attempts int
	// When is the time the task was due.
	When time.Time
	// Redelivered is true when an earlier worker started this run and
	// stopped renewing its lease (it died or lost the database).
	Redelivered bool
	// Worker is the name of the worker running the task.
	Worker string
	// Queue is the queue the task came from, for adding follow-up tasks.
	Queue *queue.Queue
	// Logger carries the queue, task name, key, attempt and worker, and the
	// arguments tagged for logging.
	Logger *slog.Logger
}

type infoKey struct{}

// InfoFrom returns the Info of the task whose handler ctx belongs to.
func InfoFrom(ctx context.Context) (*Info, bool) {
	i, ok := ctx.Value(infoKey{}).(*Info)
	return i, ok
}

// LoggerFrom returns the task logger of ctx's task, or slog.Default()
// outside a task.
func LoggerFrom(ctx context.Context) *slog.Logger {
	if i, ok := InfoFrom(ctx); ok {
		return i.Logger
	}
	return slog.Default()
}

// Task is what a handler receives: the decoded arguments, the task's view of
// itself, and handles on its timeout, its next run and its progress.
type Task[T queue.Args] struct {
	// Args are the task's arguments.
	Args T
	Info
	// Timeout reads and extends the run's time limit.
	Timeout *Timeout
	// Perpetual steers the next run of a Perpetual or Cron task; it is nil
	// for other tasks.
	Perpetual *PerpetualRun[T]
	// Progress reports how far the task has got.
	Progress *Progress

	result json.RawMessage
}

// SetResult records v, as JSON, as the task's result: callers read it with
// queue.Result or Execution.DecodeResult once the task has completed. It
// returns an error when v cannot be encoded. Perpetual tasks keep no result.
func (t *Task[T]) SetResult(v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("set result of task %q: %w", t.Key, err)
	}
	t.result = raw
	return nil
}

// Timeout is a run's time limit. Without a Timeout policy it is unlimited.
// It is safe for concurrent use.
type Timeout struct {
	mu       sync.Mutex
	base     time.Duration
	deadline time.Time
	timer    *time.Timer
}

// Remaining is the time left before the run is cancelled; math.MaxInt64
// when unlimited.
func (t *Timeout) Remaining() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer == nil {
		return math.MaxInt64
	}
	return time.Until(t.deadline)
}

// Extend moves the deadline by d, or by the policy's Timeout when d is 0.
// It does nothing when the run is unlimited or already timed out.
func (t *Timeout) Extend(d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer == nil {
		return
	}
	if d <= 0 {
		d = t.base
	}
	if !t.timer.Stop() {
		return // timed out already: Remaining stays at or below zero
	}
	t.deadline = t.deadline.Add(d)
	t.timer.Reset(time.Until(t.deadline))
}

// start arms the limit on ctx: when it passes, ctx is cancelled with
// cause. It returns the context and a stop function.
func (t *Timeout) start(ctx context.Context, key string) (context.Context, func()) {
	if t.base <= 0 {
		return ctx, func() {}
	}
	cause := &errTimeout{key: key, limit: t.base}
	ctx, cancel := context.WithCancelCause(ctx)
	t.mu.Lock()
	t.deadline = time.Now().Add(t.base)
	t.timer = time.AfterFunc(t.base, func() { cancel(cause) })
	t.mu.Unlock()
	return ctx, func() {
		t.mu.Lock()
		t.timer.Stop()
		t.mu.Unlock()
		cancel(nil)
	}
}

// errTimeout marks a run cancelled by its time limit.
type errTimeout struct {
	key   string
	limit time.Duration
}

func (e *errTimeout) Error() string {
	return fmt.Sprintf("task %s exceeded timeout of %v", e.key, e.limit)
}

// perpetualState is what a handler decided about its task's next run.
type perpetualState struct {
	mu       sync.Mutex
	every    time.Duration
	at       time.Time
	after    time.Duration
	hasAfter bool
	cancel   bool
	args     json.RawMessage
}

// PerpetualRun steers the next run of a Perpetual or Cron task. It is safe
// for concurrent use.
type PerpetualRun[T queue.Args] struct {
	s *perpetualState
}

// Cancel ends the chain: no next run is scheduled.
func (p *PerpetualRun[T]) Cancel() {
	p.s.mu.Lock()
	p.s.cancel = true
	p.s.mu.Unlock()
}

// Perpetuate gives the next run new arguments.
func (p *PerpetualRun[T]) Perpetuate(args T) error {
	raw, err := json.Marshal(args)
	if err != nil {
		return fmt.Errorf("perpetuate: %w", err)
	}
	p.s.mu.Lock()
	p.s.args = raw
	p.s.mu.Unlock()
	return nil
}

// Every changes the interval used to schedule the next run. Each run starts
// from the policy's interval, so a lasting change is made on every run (for
// example from a value carried in the arguments).
func (p *PerpetualRun[T]) Every(d time.Duration) {
	p.s.mu.Lock()
	p.s.every = max(d, 0)
	p.s.mu.Unlock()
}

// After schedules the next run d after this one ends.
func (p *PerpetualRun[T]) After(d time.Duration) {
	p.s.mu.Lock()
	p.s.after, p.s.hasAfter = max(d, 0), true
	p.s.at = time.Time{}
	p.s.mu.Unlock()
}

// At schedules the next run at t (a time in the past means at once).
func (p *PerpetualRun[T]) At(t time.Time) {
	p.s.mu.Lock()
	p.s.at, p.s.hasAfter = t, false
	p.s.mu.Unlock()
}

// Progress reports how far a running task has got: the values land on its
// record at once, where Execution and `shadows watch` read them. It is safe
// for concurrent use.
type Progress struct {
	w *Worker
	x *execution
}

// ErrInvalidProgress is returned for a progress value below 1.
var ErrInvalidProgress = errors.New("invalid progress value")

// SetTotal sets the count the task works towards.
func (p *Progress) SetTotal(ctx context.Context, total int64) error {
	if total < 1 {
		return fmt.Errorf("%w: total %d is below 1", ErrInvalidProgress, total)
	}
	return p.set(ctx, db.SetProgressParams{Total: &total})
}

// Increment adds n (at least 1) to the count done.
func (p *Progress) Increment(ctx context.Context, n int64) error {
	if n < 1 {
		return fmt.Errorf("%w: increment %d is below 1", ErrInvalidProgress, n)
	}
	return p.set(ctx, db.SetProgressParams{Increment: &n})
}

// SetCurrent sets the count done.
func (p *Progress) SetCurrent(ctx context.Context, current int64) error {
	if current < 0 {
		return fmt.Errorf("%w: current %d is negative", ErrInvalidProgress, current)
	}
	return p.set(ctx, db.SetProgressParams{Current: &current})
}

// SetMessage sets a line describing the current step; "" clears it.
func (p *Progress) SetMessage(ctx context.Context, msg string) error {
	return p.set(ctx, db.SetProgressParams{Message: &msg})
}

func (p *Progress) set(ctx context.Context, params db.SetProgressParams) error {
	params.Queue, params.Key, params.Generation, params.StartedAt = p.w.q.Name(), p.x.Key, p.x.generation, p.x.started
	if err := p.w.queries.SetProgress(ctx, p.w.pool, params); err != nil {
		return fmt.Errorf("progress of task %q: %w", p.x.Key, err)
	}
	return nil
}
