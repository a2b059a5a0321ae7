package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shadows-go/shadows/db"
	"github.com/shadows-go/shadows/internal/argtag"
	"github.com/shadows-go/shadows/internal/telemetry"
	"github.com/shadows-go/shadows/queue"
)

// Bounds [New] checks: a shorter redelivery timeout leaves too little time
// to renew leases, and concurrency beyond this is surely a mistake.
const (
	MinRedeliveryTimeout = time.Second
	MaxConcurrency       = 1 << 20
)

// Defaults applied by [New] to a zero [Config].
const (
	DefaultConcurrency          = 10
	DefaultRedeliveryTimeout    = 5 * time.Minute
	DefaultReconnectionDelay    = 5 * time.Second
	DefaultCheckInterval        = 250 * time.Millisecond
	DefaultSchedulingResolution = 10 * time.Millisecond
)

// Config configures a [Worker]. The zero value is usable.
type Config struct {
	// Queue is the queue to work, with the same settings its producers use
	// (above all ExecutionTTL). Defaults as queue.Config does.
	Queue queue.Config

	// Name identifies the worker in records, heartbeats and logs. Defaults
	// to "hostname#pid".
	Name string

	// Concurrency is how many tasks run at once. Defaults to 10.
	Concurrency int

	// RedeliveryTimeout is the lease on a running task: the worker renews it
	// every quarter of this while the task runs, and if the worker dies any
	// other worker runs the task again once the lease lapses. Each of the
	// worker's own database operations (a claim, an outcome batch, a
	// renewal) is abandoned and retried after half of it. Workers of one
	// queue should agree on it. Defaults to 5 minutes; at least
	// MinRedeliveryTimeout. (The other durations must be at least 1ms.)
	RedeliveryTimeout time.Duration

	// ReconnectionDelay caps the back-off between attempts while the
	// database cannot be reached. Defaults to 5 seconds.
	ReconnectionDelay time.Duration

	// CheckInterval is how often an idle worker looks for due tasks when no
	// notification arrives: the bound on pickup latency if notifications are
	// lost. It also bounds how long a busy worker, working off a backlog in
	// claim order from where its last claim stopped, may miss a task that
	// became due behind that point without a notification. Defaults to
	// 250ms.
	CheckInterval time.Duration

	// SchedulingResolution is the granularity of an idle worker's timer for
	// the next future task: such a task starts at most this late, and
	// future tasks due within one resolution are woken for together.
	// Defaults to 10ms.
	SchedulingResolution time.Duration

	// Fallback runs tasks whose name no handler is registered for. It
	// receives the stored arguments. Defaults to logging a warning and
	// completing the task.
	Fallback Handler[RawArgs]

	// Middleware wraps every task this worker runs, first outermost: setup
	// and teardown shared by all tasks, such as a database transaction or a
	// tracing span.
	Middleware []Middleware

	// ReseedInterval is how often the worker re-seeds automatic Perpetual
	// and Cron tasks whose chain was broken (cancelled, or lost to a
	// strike that was restored). Defaults to 1 minute.
	ReseedInterval time.Duration

	// NoAutomaticTasks stops the worker from seeding automatic tasks, for
	// tests and for workers that should only run what they are given.
	NoAutomaticTasks bool

	// Logger receives the worker's own logs and is the parent of every task
	// logger. Defaults to the queue config's Logger, or slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	if c.Name == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "localhost"
		}
		c.Name = fmt.Sprintf("%s#%d", host, os.Getpid())
	}
	if err := queue.ValidName(c.Name); err != nil {
		return c, fmt.Errorf("%w: name %q: %w", ErrInvalidConfig, c.Name, err)
	}
	var err error
	// Each duration has a floor: a plain number where a duration was meant
	// (RedeliveryTimeout: 5) is nanoseconds, and gave claims that always
	// timed out, a ticker that panicked, or a loop polling without pause.
	atLeast := func(d *time.Duration, def, floor time.Duration, what string) {
		switch {
		case *d == 0:
			*d = def
		case *d < 0 && err == nil:
			err = fmt.Errorf("%w: %s %v is negative", ErrInvalidConfig, what, *d)
		case *d < floor && err == nil:
			err = fmt.Errorf("%w: %s %v is shorter than %v", ErrInvalidConfig, what, *d, floor)
		}
	}
	atLeast(&c.RedeliveryTimeout, DefaultRedeliveryTimeout, MinRedeliveryTimeout, "redelivery timeout")
	atLeast(&c.ReconnectionDelay, DefaultReconnectionDelay, time.Millisecond, "reconnection delay")
	atLeast(&c.CheckInterval, DefaultCheckInterval, time.Millisecond, "check interval")
	atLeast(&c.SchedulingResolution, DefaultSchedulingResolution, time.Millisecond, "scheduling resolution")
	atLeast(&c.ReseedInterval, ReseedInterval, time.Millisecond, "reseed interval")
	if err != nil {
		return c, err
	}
	switch {
	case c.Concurrency == 0:
		c.Concurrency = DefaultConcurrency
	case c.Concurrency < 0:
		return c, fmt.Errorf("%w: concurrency %d is negative", ErrInvalidConfig, c.Concurrency)
	case c.Concurrency > MaxConcurrency:
		return c, fmt.Errorf("%w: concurrency %d is more than %d", ErrInvalidConfig, c.Concurrency, MaxConcurrency)
	}
	if c.Fallback == nil {
		c.Fallback = dropUnknown
	}
	if c.Logger == nil {
		c.Logger = c.Queue.Logger
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Queue.Logger == nil {
		c.Queue.Logger = c.Logger
	}
	return c, nil
}

// Worker claims tasks of one queue and runs them with the handlers of its
// registry. Create it with New and start it with Run; a Worker runs once.
type Worker struct {
	pool     *pgxpool.Pool
	reg      *Registry
	cfg      Config
	q        *queue.Queue
	queries  *db.Queries
	logger   *slog.Logger
	fallback *registration
	claiming atomic.Bool  // the claim loops are running
	contact  atomic.Int64 // unix nanoseconds of the last successful database round trip
	tel      *telemetry.Telemetry
	labels   sync.Map // task name → metric labels

	started atomic.Bool

	// Set by a run, read by its goroutines.
	wake            chan struct{} // a notification or reconnect: tasks may be due
	slotFreed       chan struct{} // a handler returned (for the claim loop)
	helperSlotFreed chan struct{} // the same, for the helper (see claimLoops)
	backlogBegan    chan struct{} // a claim filled every free slot
	backlog         atomic.Bool   // the last claim filled every free slot
	posEpoch        atomic.Uint64 // advanced when a task may have become due behind claimPos
	renewNow        chan struct{} // check the running tasks' leases and cancels now
	running         atomic.Int64  // handlers running now, and slots reserved by a claim
	claimPos        claimPosition
	inflight        inflightSet
	done            *finisher
	atMost          map[string]int // RunAtMost limits; nil otherwise
	runs            map[string]int // claims per key under RunAtMost
	atMostMu        sync.Mutex
}

// New returns a worker for the queue cfg.Queue names, running the tasks
// registered in reg. It does not touch the database.
func New(pool *pgxpool.Pool, reg *Registry, cfg Config) (*Worker, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: nil pool", ErrInvalidConfig)
	}
	if reg == nil {
		return nil, fmt.Errorf("%w: nil registry", ErrInvalidConfig)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	q, err := queue.New(pool, cfg.Queue)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	w := &Worker{
		pool:    pool,
		reg:     reg,
		cfg:     cfg,
		q:       q,
		queries: db.New(),
		logger:  cfg.Logger.With("queue", q.Name(), "worker", cfg.Name),
	}
	w.fallback = fallbackRegistration(cfg.Fallback)
	w.tel = telemetry.New(q.Name(), cfg.Queue.TracerProvider, cfg.Queue.MeterProvider)
	return w, nil
}

// Name returns the worker's name.
func (w *Worker) Name() string { return w.cfg.Name }

// Healthy reports whether the worker's claim loop is running and it reached
// the database within the last two heartbeat intervals: what a health check
// endpoint should answer.
func (w *Worker) Healthy() bool {
	last := time.Unix(0, w.contact.Load())
	return w.claiming.Load() && time.Since(last) <= 2*w.q.Config().HeartbeatInterval
}

// touched notes a successful round trip to the database.
func (w *Worker) touched() { w.contact.Store(time.Now().UnixNano()) }

// Queue returns the queue the worker serves.
func (w *Worker) Queue() *queue.Queue { return w.q }

// Run claims and runs tasks until ctx is cancelled. Then it stops claiming,
// waits for the running tasks to finish and record their outcome, and
// returns nil. While the database cannot be reached it logs, backs off and
// retries; it returns an error only if it cannot run at all.
func (w *Worker) Run(ctx context.Context) error {
	return w.run(ctx, false, nil)
}

// RunUntilFinished runs tasks until the queue has none left to run: none
// queued, scheduled (future ones included) or running on any worker. It
// never returns for a queue fed by a self-rescheduling task. If ctx ends
// first it stops as Run does and returns an error wrapping ctx's
// ([ErrUnfinished] and, say, [context.DeadlineExceeded]), so that a caller
// can tell a queue that finished from a wait that gave up.
func (w *Worker) RunUntilFinished(ctx context.Context) error {
	return w.run(ctx, true, nil)
}

// RunAtMost runs like RunUntilFinished, but runs each key in limits at most
// that many times: a perpetual task's chain ends after its last allowed run
// (completed), and any later delivery of the key ends cancelled without
// running. It exists to test self-rescheduling tasks.
func (w *Worker) RunAtMost(ctx context.Context, limits map[string]int) error {
	atMost := make(map[string]int, len(limits))
	for k, n := range limits {
		atMost[k] = n
	}
	return w.run(ctx, true, atMost)
}

// ErrAlreadyStarted is returned by a second call of Run, RunUntilFinished
// or RunAtMost on one Worker: a worker runs once; make another to run again.
var ErrAlreadyStarted = errors.New("worker: already started (a Worker runs once)")

// ErrUnfinished is returned, wrapped with the context's error, by
// RunUntilFinished and RunAtMost when their context ended before the queue
// finished.
var ErrUnfinished = errors.New("worker: stopped before the queue finished")

// prepareRun makes the signals, the in-flight set and the finisher a run
// uses.
func (w *Worker) prepareRun() {
	w.wake = make(chan struct{}, 1)
	w.slotFreed = make(chan struct{}, 1)
	w.helperSlotFreed = make(chan struct{}, 1)
	w.backlogBegan = make(chan struct{}, 1)
	w.renewNow = make(chan struct{}, 1)
	w.inflight = inflightSet{m: make(map[inflightKey]*inflight)}
	w.done = newFinisher(w)
}

func (w *Worker) run(ctx context.Context, untilFinished bool, atMost map[string]int) error {
	if !w.started.CompareAndSwap(false, true) {
		return ErrAlreadyStarted
	}
	if atMost != nil {
		w.atMost, w.runs = atMost, make(map[string]int)
	}
	w.prepareRun()

	unregister := w.tel.Depths(func(ctx context.Context) (int64, int64, bool) {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		c, err := w.queries.CountTasks(ctx, w.pool, w.q.Name())
		if err != nil {
			return 0, 0, false
		}
		return c.Due, c.Pending - c.Due, true
	})
	defer unregister()

	// Services outlive ctx: they keep renewing leases and recording outcomes
	// while running tasks drain, and stop after.
	svcCtx, stopServices := context.WithCancel(context.WithoutCancel(ctx))
	var services sync.WaitGroup
	services.Go(func() { w.listen(svcCtx) })
	services.Go(func() { w.done.run(svcCtx) })
	services.Go(func() { w.renewLeases(svcCtx) })
	answered := make(chan struct{}, 1)
	var collected atomic.Bool
	services.Go(func() { w.heartbeat(svcCtx, answered) })
	services.Go(func() { w.collectGarbageEvery(svcCtx, answered, &collected) })
	if !w.cfg.NoAutomaticTasks {
		// Seed once before claiming, so RunUntilFinished sees the seeds.
		w.seedOnce(ctx)
		services.Go(func() { w.reseed(svcCtx) })
	}

	// Tasks run under their own contexts, cancelled only by a cancel.
	var tasks sync.WaitGroup
	finished := w.claimLoops(ctx, untilFinished, &tasks)
	tasks.Wait()
	w.done.drain()
	stopServices()
	services.Wait()
	if untilFinished && finished && !collected.Load() {
		gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalCollection)
		w.collectGarbage(gctx)
		cancel()
	}

	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := w.queries.RemoveWorker(rctx, w.pool, db.RemoveWorkerParams{Queue: w.q.Name(), Name: w.cfg.Name}); err != nil {
		w.logger.Warn("remove worker heartbeat", "error", err)
	}
	if untilFinished && !finished {
		return fmt.Errorf("%w: %w", ErrUnfinished, context.Cause(ctx))
	}
	return nil
}

// fallbackRegistration wraps the fallback handler as a registration with the
// zero policy.
func fallbackRegistration(h Handler[RawArgs]) *registration {
	policy, _ := Policy{}.compile() // the zero policy always compiles
	layout := &argtag.Layout{}
	return &registration{name: "fallback", policy: policy, layout: layout, run: typedRun(h, layout, policy)}
}

// seedOnce adds every automatic task under its task name: now for a
// Perpetual task, at its next match for a Cron task. A live key makes the add
// a no-op, so however many workers seed, one chain lives.
func (w *Worker) seedOnce(ctx context.Context) {
	for _, reg := range w.reg.automatic() {
		var when time.Time
		if reg.policy.schedule != nil {
			when = reg.policy.nextCron(time.Now())
		}
		ex, err := w.q.Add(ctx, reg.seed(), &queue.AddOpts{Key: reg.name, When: when})
		switch {
		case err != nil && ctx.Err() == nil:
			w.logger.Warn("seeding automatic task failed", "task", reg.name, "error", err)
		case err == nil && ex.Disposition == queue.DispositionScheduled:
			w.logger.Info("seeded automatic task", "task", reg.name, "when", ex.When)
		}
	}
}

// reseed seeds the automatic tasks again every ReseedInterval, reviving
// chains that were cancelled or struck and restored.
func (w *Worker) reseed(ctx context.Context) {
	if len(w.reg.automatic()) == 0 {
		return
	}
	t := time.NewTicker(w.cfg.ReseedInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.seedOnce(ctx)
	}
}

// signal does a non-blocking send on a size-1 channel.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// backoff returns the wait before attempt n (from 0) at reaching the
// database: doubling from 100ms up to ReconnectionDelay, with jitter.
func (w *Worker) backoff(n int) time.Duration {
	d := 100 * time.Millisecond << min(n, 10)
	d = min(d, w.cfg.ReconnectionDelay)
	return d/2 + rand.N(d/2+1)
}

// sleep waits for d or ctx, reporting whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// leaseSeconds is the lease a claim or renewal grants.
func (w *Worker) leaseSeconds() float64 { return w.cfg.RedeliveryTimeout.Seconds() }

// opTimeout bounds one database operation of the worker's own (a claim
// with its admission, an outcome batch, a lease renewal). Half a lease: an
// operation that has not returned by then is stuck, and the leases it
// concerns still have time to be renewed or recorded by a retry. A tighter
// bound fails operations that are merely slow on a loaded machine, and a
// claim abandoned after its rows were taken leaves them to be redelivered.
func (w *Worker) opTimeout() time.Duration { return w.cfg.RedeliveryTimeout / 2 }

// sweepInterval is how often lapsed leases are looked for.
func (w *Worker) sweepInterval() time.Duration {
	return min(w.cfg.RedeliveryTimeout/4, time.Second)
}
