package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shadows-go/shadows/db"
	"github.com/shadows-go/shadows/internal/notify"
)

// State is where a task is in its life. The values are docket's.
type State string

// The states of a task. Scheduled, Queued and Running are live; the others
// are terminal.
const (
	// StateScheduled: waiting for its time to come.
	StateScheduled State = "scheduled"
	// StateQueued: due, waiting for a worker.
	StateQueued State = "queued"
	// StateRunning: a worker is running it.
	StateRunning State = "running"
	// StateCompleted: its handler returned without error.
	StateCompleted State = "completed"
	// StateFailed: its handler failed and no retry is left.
	StateFailed State = "failed"
	// StateCancelled: cancelled before or while it ran.
	StateCancelled State = "cancelled"
)

// Terminal reports whether s is an end state.
func (s State) Terminal() bool {
	return s == StateCompleted || s == StateFailed || s == StateCancelled
}

// Disposition says what an add or replace did.
type Disposition int

// The dispositions of an add or replace.
const (
	// DispositionLoaded marks an Execution read back from the database
	// rather than produced by an add.
	DispositionLoaded Disposition = iota + 1
	// DispositionScheduled: the task was stored and will run.
	DispositionScheduled
	// DispositionAlreadyScheduled: the key was live (scheduled, queued or
	// running), so nothing was changed.
	DispositionAlreadyScheduled
	// DispositionStruck: a strike matched the task, so nothing was stored.
	DispositionStruck
)

func (d Disposition) String() string {
	switch d {
	case DispositionLoaded:
		return "loaded"
	case DispositionScheduled:
		return "scheduled"
	case DispositionAlreadyScheduled:
		return "already_scheduled"
	case DispositionStruck:
		return "struck"
	}
	return fmt.Sprintf("Disposition(%d)", int(d))
}

// Execution is a task's record: what was asked for and, once it has run, how
// it went. Time fields a task has not reached are zero.
type Execution struct {
	Queue       string
	Key         string
	Task        string
	Args        json.RawMessage
	Disposition Disposition
	// StruckBy is the strike rule that kept an add out
	// (DispositionStruck).
	StruckBy string
	State    State
	// Held is true while a hold strike keeps the task waiting.
	Held bool
	// WaitingOn is the concurrency limit key the task waits for a slot of.
	WaitingOn string
	// When is the time the task is due.
	When    time.Time
	Attempt int
	// Generation counts the adds and replaces of this key; a copy of an older
	// generation never runs and never overwrites this record.
	Generation  int64
	Redelivered bool
	Worker      string
	StartedAt   time.Time
	FinishedAt  time.Time
	// Error is the failure message of a failed task.
	Error string
	// Result is the JSON value the handler produced, if any.
	Result    json.RawMessage
	CreatedAt time.Time
	// Progress is what the handler last reported.
	Progress Progress
}

// Progress is how far a task has got, as its handler reports it. It stays on
// the record after the task ends.
type Progress struct {
	Current int64
	// Total is 0 until the handler sets it.
	Total   int64
	Message string
	// UpdatedAt is zero until the handler reports progress.
	UpdatedAt time.Time
}

// DecodeResult unmarshals the task's result into v.
func (e *Execution) DecodeResult(v any) error {
	if len(e.Result) == 0 {
		return fmt.Errorf("task %q has no result", e.Key)
	}
	if err := json.Unmarshal(e.Result, v); err != nil {
		return fmt.Errorf("decode result of task %q: %w", e.Key, err)
	}
	return nil
}

// TaskError is returned by Wait for a task that failed. It carries the stored
// failure message.
type TaskError struct {
	Key     string
	Task    string
	Message string
}

func (e *TaskError) Error() string {
	return fmt.Sprintf("task %s %q failed: %s", e.Task, e.Key, e.Message)
}

// Execution returns the record of the task with key, or ErrNotFound.
func (q *Queue) Execution(ctx context.Context, key string) (*Execution, error) {
	if err := validateKey(key); err != nil {
		return nil, err
	}
	row, err := q.queries.GetTask(ctx, q.pool, db.GetTaskParams{Queue: q.cfg.Name, Key: key})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("execution %q: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("execution %q: %w", key, err)
	}
	return executionFromRow(row), nil
}

func executionFromRow(r db.GetTaskRow) *Execution {
	e := &Execution{
		Queue:       r.Queue,
		Key:         r.Key,
		Task:        r.Task,
		Args:        r.Args,
		Disposition: DispositionLoaded,
		State:       State(r.State),
		When:        r.RunAt,
		Attempt:     int(r.Attempt),
		Generation:  r.Generation,
		Redelivered: r.Deliveries > 1,
		Held:        r.Held,
		WaitingOn:   r.WaitingOn,
		Result:      r.Result,
		CreatedAt:   r.CreatedAt,
	}
	switch {
	case e.State == StateScheduled && !r.RunAt.After(r.Now):
		e.State = StateQueued
	case e.State == StateRunning && r.CancelRequested:
		// Cancelled, as far as users see it, while its handler winds
		// down; the worker records completed instead if the handler
		// ignores the cancel.
		e.State = StateCancelled
	}
	if r.Worker != nil {
		e.Worker = *r.Worker
	}
	if r.StartedAt != nil {
		e.StartedAt = *r.StartedAt
	}
	if r.FinishedAt != nil {
		e.FinishedAt = *r.FinishedAt
	}
	if r.Error != nil {
		e.Error = *r.Error
	}
	if r.ProgressCurrent != nil {
		e.Progress.Current = *r.ProgressCurrent
	}
	if r.ProgressTotal != nil {
		e.Progress.Total = *r.ProgressTotal
	}
	if r.ProgressMessage != nil {
		e.Progress.Message = *r.ProgressMessage
	}
	if r.ProgressAt != nil {
		e.Progress.UpdatedAt = *r.ProgressAt
	}
	return e
}

// waitPoll bounds how long Wait trusts notifications alone.
const waitPoll = time.Second

// Wait blocks until the task with key ends, and returns its record with:
// nil when it completed; a *TaskError carrying the stored message when it
// failed; ErrCancelled when it was cancelled. Bound the wait with ctx
// (context.WithTimeout or WithDeadline); on expiry Wait returns ctx's error.
// A key with no record is waited for too, since it may be added later. A
// running task that was cancelled reads cancelled at once, but Wait returns
// only when its handler has returned, with the outcome the worker recorded
// (ErrCancelled, or as the handler ended if it ignored the cancel) — unless
// the key is added again meanwhile: Wait follows the key, so it then waits
// for the new run.
//
// Wait holds one pooled connection while it waits: it is woken by a
// notification when workers record results, and polls once a second in case
// a notification is lost. With NoExecutionTTL nothing is kept to wait for.
func (q *Queue) Wait(ctx context.Context, key string) (*Execution, error) {
	if err := validateKey(key); err != nil {
		return nil, err
	}
	conn, err := q.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("wait for %q: %w", key, err)
	}
	listening := false
	defer func() {
		if listening {
			// The connection goes back to the pool: stop listening on it
			// first, or drop it if that cannot be done.
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if _, err := conn.Exec(uctx, "UNLISTEN "+notify.Done); err != nil {
				conn.Hijack().Close(uctx)
				return
			}
		}
		conn.Release()
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+notify.Done); err != nil {
		return nil, fmt.Errorf("wait for %q: %w", key, err)
	}
	listening = true
	for {
		row, err := q.queries.GetTask(ctx, conn, db.GetTaskParams{Queue: q.cfg.Name, Key: key})
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return nil, fmt.Errorf("wait for %q: %w", key, err)
		default:
			// A cancelled run whose handler is still winding down has not
			// ended yet: it ends cancelled, or completed if the handler
			// ignores the cancel.
			winding := row.State == db.ShadowsTaskStateRunning && row.CancelRequested
			if e := executionFromRow(row); e.State.Terminal() && !winding {
				return e, e.outcome()
			}
		}
		// Sleep until a batch of this queue ends, or the poll interval
		// (one deadline: other queues' notifications do not put it off).
		poll := time.Now().Add(waitPoll)
		for {
			wctx, cancel := context.WithDeadline(ctx, poll)
			n, err := conn.Conn().WaitForNotification(wctx)
			cancel()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("wait for %q: %w", key, ctx.Err())
			}
			if err != nil {
				if errors.Is(err, context.DeadlineExceeded) {
					break // poll
				}
				return nil, fmt.Errorf("wait for %q: %w", key, err)
			}
			if n.Payload == q.cfg.Name {
				break
			}
		}
	}
}

func (e *Execution) outcome() error {
	switch e.State {
	case StateFailed:
		msg := e.Error
		if msg == "" {
			msg = "task execution failed"
		}
		return &TaskError{Key: e.Key, Task: e.Task, Message: msg}
	case StateCancelled:
		return fmt.Errorf("task %s %q: %w", e.Task, e.Key, ErrCancelled)
	}
	return nil
}

// Result waits for the task with key like [Queue.Wait] and decodes the value
// its handler produced into a T.
func Result[T any](ctx context.Context, q *Queue, key string) (T, error) {
	var v T
	e, err := q.Wait(ctx, key)
	if err != nil {
		return v, err
	}
	err = e.DecodeResult(&v)
	return v, err
}
