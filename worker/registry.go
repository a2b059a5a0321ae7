package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/shadows-go/shadows/internal/argtag"
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
	// when a fallback chooses to fail it.
	ErrUnknownTask = errors.New("unknown task")
)

// Handler runs one task. It returns nil when the task succeeded. Its ctx is
// cancelled when the task is cancelled (queue.Cancel) or times out; a worker
// shutting down lets handlers finish.
type Handler[T queue.Args] func(ctx context.Context, t *Task[T]) error

// Middleware wraps every task a worker runs, around the handler and inside
// the task's timeout. It calls next to run the task (and any inner
// middleware) and may act before and after it; returning an error without
// calling next fails the task without running it. Middleware runs in the
// order given: the first is outermost.
type Middleware func(ctx context.Context, info *Info, next func(context.Context) error) error

// RawArgs are the arguments of a task handed to a fallback: the name it was
// added under and its arguments as stored.
type RawArgs struct {
	Name string
	JSON json.RawMessage
}

// TaskName returns the name the task was added under.
func (a RawArgs) TaskName() string { return a.Name }

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
	policy *compiledPolicy
	layout *argtag.Layout
	run    func(ctx context.Context, x *execution) (json.RawMessage, error)
	// decode turns stored arguments into a *T for run; nil for RawArgs.
	// The claim loop calls it before starting each task: its goroutine's
	// stack is already deep, while a fresh task goroutine would grow (copy)
	// its stack for the decoder's recursion on every run.
	decode func(json.RawMessage) (any, error)
	// seed returns the arguments an automatic task is seeded with.
	seed func() queue.Args
}

// execution is a claimed task as the worker runs it.
type execution struct {
	Info
	args         json.RawMessage
	generation   int64
	deliveries   int32           // this claim's delivery number, guarding its writes
	traceContext json.RawMessage // of the code that added the task
	started      time.Time       // by the database's clock
	w            *Worker
	timeout      *Timeout
	perpetual    *perpetualState
	// slots are the concurrency slots the run holds, under runID, drawn at
	// random when it asks for them (a redelivery is a new run); preErr
	// fails the run before its handler is called.
	slots  []slotRequest
	runID  int64
	preErr error
	// reg is the task's registration, looked up once when it is started
	// (nil: no handler knows the name). decoded and decodeErr are its
	// arguments, decoded by the claim loop before the run starts.
	reg       *registration
	decoded   any
	decodeErr error
	// The call as the log shows it: see begin.
	logInfo bool          // info lines are logged: render the call at once
	began   time.Time     // when the handler was called (zero: never)
	render  func() string // renders the call; nil until begin
	call    string        // the rendered call, once rendered
}

// begin marks the handler's start, with a function that renders the call
// for the log (called only when something is logged).
func (x *execution) begin(render func() string) {
	x.render, x.began = render, time.Now()
	if x.logInfo {
		x.call = renderSafely(render, x.Name)
		x.Logger.Info("↪ "+x.call, "lateness", x.started.Sub(x.When).Round(time.Millisecond), "redelivered", x.Redelivered)
	}
}

// callText is the call as the log shows it, rendered at most once.
func (x *execution) callText() string {
	if x.call == "" {
		x.call = renderSafely(x.render, x.Name)
	}
	return x.call
}

// NewRegistry returns a registry holding the built-in tasks trace, fail and
// sleep (see Trace, Fail and Sleep).
func NewRegistry() *Registry {
	r := &Registry{tasks: make(map[string]*registration)}
	registerBuiltins(r)
	return r
}

// Register adds handler h for tasks of type T, under T's TaskName, run with
// policy p. It fails with ErrInvalidRegistration when the name is taken or
// empty, the policy is invalid, or T's shadows tags are malformed.
func Register[T queue.Args](r *Registry, h Handler[T], p Policy) error {
	var zero T
	name := zero.TaskName()
	fail := func(err error) error {
		return fmt.Errorf("%w: task %s: %w", ErrInvalidRegistration, name, err)
	}
	if name == "" {
		return fmt.Errorf("%w: %T has an empty task name", ErrInvalidRegistration, zero)
	}
	if h == nil {
		return fail(errors.New("nil handler"))
	}
	policy, err := p.compile()
	if err != nil {
		return fail(err)
	}
	layout, err := argtag.Parse(reflect.TypeFor[T]())
	if err != nil {
		return fail(err)
	}
	if err := checkArgs(p, layout); err != nil {
		return fail(err)
	}
	policy.layout = layout
	if policy.automatic {
		if req := layout.Required(); len(req) > 0 {
			return fail(fmt.Errorf("an automatic task is seeded with zero-value arguments, but %s required", plural(req)))
		}
		if _, err := json.Marshal(zero); err != nil {
			return fail(fmt.Errorf("an automatic task's zero-value arguments must encode: %w", err))
		}
	}
	reg := &registration{
		name:   name,
		policy: policy,
		layout: layout,
		run:    typedRun(h, layout, policy),
		decode: typedDecode[T](),
		seed:   func() queue.Args { return zero },
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.tasks[name]; dup {
		return fail(errors.New("already registered"))
	}
	r.tasks[name] = reg
	return nil
}

func plural(fields []string) string {
	if len(fields) == 1 {
		return "field " + fields[0] + " is"
	}
	return "fields " + strings.Join(fields, ", ") + " are"
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

// typedDecode returns the decoder of T's stored arguments, or nil for
// RawArgs, which are handed over undecoded.
func typedDecode[T queue.Args]() func(json.RawMessage) (any, error) {
	var zero T
	if _, raw := any(&zero).(*RawArgs); raw {
		return nil
	}
	return func(args json.RawMessage) (any, error) {
		p := new(T)
		err := json.Unmarshal(args, p)
		return p, err
	}
}

func typedRun[T queue.Args](h Handler[T], layout *argtag.Layout, policy *compiledPolicy) func(context.Context, *execution) (json.RawMessage, error) {
	return func(ctx context.Context, x *execution) (json.RawMessage, error) {
		// The task and its progress in one allocation.
		box := &struct {
			t Task[T]
			p Progress
		}{p: Progress{w: x.w, x: x}}
		t := &box.t
		t.Info, t.Timeout, t.Progress = x.Info, x.timeout, &box.p
		t.Attempts = policy.attempts
		if x.perpetual != nil {
			t.Perpetual = &PerpetualRun[T]{s: x.perpetual}
		}
		var err error
		if raw, isRaw := any(&t.Args).(*RawArgs); isRaw {
			*raw = RawArgs{Name: x.Name, JSON: x.args}
		} else if err = x.decodeErr; err == nil {
			t.Args = *x.decoded.(*T) // decoded by startAll
		}
		if err != nil {
			x.begin(func() string { return x.Name + "(…)" })
			return nil, &ArgsError{Task: x.Name, Err: err}
		}
		// The arguments as the handler got them (a shallow copy: the
		// handler may change its own), rendered only if a line is logged.
		args := t.Args
		x.begin(func() string { return x.Name + "(" + layout.Format(args) + ")" })
		ctx = context.WithValue(ctx, infoKey{}, &t.Info)
		if len(x.w.cfg.Middleware) == 0 {
			err = h(ctx, t)
		} else {
			err = x.w.withMiddleware(ctx, &t.Info, func(ctx context.Context) error { return h(ctx, t) })
		}
		return t.result, err
	}
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

// automatic returns the registrations to seed automatically.
func (r *Registry) automatic() []*registration {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []*registration
	for _, reg := range r.tasks {
		if reg.policy.automatic {
			out = append(out, reg)
		}
	}
	slices.SortFunc(out, func(a, b *registration) int { return strings.Compare(a.name, b.name) })
	return out
}

// dropUnknown is the default fallback: it logs and completes the task.
func dropUnknown(_ context.Context, t *Task[RawArgs]) error {
	t.Logger.Warn(fmt.Sprintf("unknown task %q — dropping", t.Args.Name))
	return nil
}
