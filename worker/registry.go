package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/shadows-go/shadows/queue"
)

// Errors returned by this package. Test for them with [errors.Is].
var (
	// ErrInvalidConfig is returned by New for a config it cannot use.
	ErrInvalidConfig = errors.New("invalid worker config")
	// ErrInvalidRegistration is returned by Register for a task it cannot
	// register.
	ErrInvalidRegistration = errors.New("invalid task registration")
	// ErrUnknownTask is the error of a task no handler is registered for,
	// when the fallback chooses to fail it.
	ErrUnknownTask = errors.New("unknown task")
)

// Handler runs one task. It returns nil when the task succeeded. Its ctx is
// cancelled when the task is cancelled (queue.Cancel) or times out; a worker
// shutting down lets handlers finish.
type Handler[T queue.Args] func(ctx context.Context, t *Task[T]) error

// Task is what a handler receives: the decoded arguments and the task's own
// view of its execution.
type Task[T queue.Args] struct {
	// Args are the task's arguments.
	Args T
	// Key is the task's key.
	Key string
	// Name is the task name the task was added under.
	Name string
	// Attempt counts runs of this task, from 1.
	Attempt int
	// When is the time the task was due.
	When time.Time
	// Redelivered is true when an earlier worker started this task and
	// stopped renewing its lease (it died or lost the database).
	Redelivered bool
	// Worker is the name of the worker running the task.
	Worker string
	// Queue is the queue the task came from, for adding follow-up tasks.
	Queue *queue.Queue
	// Logger carries the queue, task name, key, attempt and worker.
	Logger *slog.Logger

	result json.RawMessage
}

// SetResult records v, as JSON, as the task's result: callers read it with
// queue.Result or Execution.DecodeResult once the task has completed. It
// returns an error when v cannot be encoded.
func (t *Task[T]) SetResult(v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("set result of task %q: %w", t.Key, err)
	}
	t.result = raw
	return nil
}

// RawArgs are the arguments of a task handed to a fallback: the name it was
// added under and its arguments as stored.
type RawArgs struct {
	Name string
	JSON json.RawMessage
}

// TaskName returns the name the task was added under.
func (a RawArgs) TaskName() string { return a.Name }

// Policy is how the worker runs a registered task.
type Policy struct {
	// Timeout bounds each run: the handler's context is cancelled after it,
	// and the run fails. Zero means no limit.
	Timeout time.Duration
}

func (p Policy) validate() error {
	if p.Timeout < 0 {
		return fmt.Errorf("timeout %v is negative", p.Timeout)
	}
	return nil
}

// Registry maps task names to handlers. Register every task before creating
// workers with it. It is safe for concurrent use.
type Registry struct {
	mu    sync.RWMutex
	tasks map[string]*registration
}

// registration is a handler with its type erased: run decodes the stored
// arguments and calls the typed handler.
type registration struct {
	name   string
	policy Policy
	run    func(ctx context.Context, x *execution) (json.RawMessage, error)
}

// execution is a claimed task as the worker runs it.
type execution struct {
	key         string
	name        string
	args        json.RawMessage
	generation  int64
	attempt     int
	when        time.Time
	started     time.Time
	redelivered bool
	worker      string
	q           *queue.Queue
	logger      *slog.Logger
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{tasks: make(map[string]*registration)}
}

// Register adds handler h for tasks of type T, under T's TaskName, run with
// policy p. Registering a name twice is an error.
func Register[T queue.Args](r *Registry, h Handler[T], p Policy) error {
	var zero T
	name := zero.TaskName()
	if name == "" {
		return fmt.Errorf("%w: %T has an empty task name", ErrInvalidRegistration, zero)
	}
	if h == nil {
		return fmt.Errorf("%w: task %s: nil handler", ErrInvalidRegistration, name)
	}
	if err := p.validate(); err != nil {
		return fmt.Errorf("%w: task %s: %w", ErrInvalidRegistration, name, err)
	}
	reg := &registration{name: name, policy: p, run: typedRun(h)}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.tasks[name]; dup {
		return fmt.Errorf("%w: task %s is already registered", ErrInvalidRegistration, name)
	}
	r.tasks[name] = reg
	return nil
}

// MustRegister is Register that panics on error, for wiring at start-up.
func MustRegister[T queue.Args](r *Registry, h Handler[T], p Policy) {
	if err := Register(r, h, p); err != nil {
		panic(err)
	}
}

// ArgsError is the failure of a task whose stored arguments do not decode
// into its registered type.
type ArgsError struct {
	Task string
	Err  error
}

func (e *ArgsError) Error() string {
	return fmt.Sprintf("decode arguments of task %s: %v", e.Task, e.Err)
}

func (e *ArgsError) Unwrap() error { return e.Err }

func typedRun[T queue.Args](h Handler[T]) func(context.Context, *execution) (json.RawMessage, error) {
	return func(ctx context.Context, x *execution) (json.RawMessage, error) {
		t := &Task[T]{
			Key:         x.key,
			Name:        x.name,
			Attempt:     x.attempt,
			When:        x.when,
			Redelivered: x.redelivered,
			Worker:      x.worker,
			Queue:       x.q,
			Logger:      x.logger,
		}
		if err := decodeArgs(x, &t.Args); err != nil {
			return nil, err
		}
		err := h(ctx, t)
		return t.result, err
	}
}

func decodeArgs(x *execution, dst any) error {
	if raw, ok := dst.(*RawArgs); ok {
		*raw = RawArgs{Name: x.name, JSON: x.args}
		return nil
	}
	if err := json.Unmarshal(x.args, dst); err != nil {
		return &ArgsError{Task: x.name, Err: err}
	}
	return nil
}

func (r *Registry) lookup(name string) *registration {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.tasks[name]
}

// Names returns the registered task names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.tasks))
	for n := range r.tasks {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// dropUnknown is the default fallback: it logs and completes the task.
func dropUnknown(_ context.Context, t *Task[RawArgs]) error {
	t.Logger.Warn(fmt.Sprintf("unknown task %q — dropping", t.Args.Name))
	return nil
}
