package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

// The worker side of every shadows measure runs in a child process, this
// binary re-executed with childEnv set: its memory is the worker's alone,
// and a worker that hangs is killed with it instead of hanging the bench.
const (
	childEnv    = "SHADOWS_BENCH_CHILD" // JSON childParams
	childURLEnv = "SHADOWS_BENCH_URL"   // kept out of the command line
	resultTag   = "BENCH-RESULT "
)

// benchArgs are the arguments of every bench task: the same JSON size as
// pgfloor's {"order_id": 12345, "customer_id": "c-1"}.
type benchArgs struct {
	OrderID    int    `json:"order_id"`
	CustomerID string `json:"customer_id"`
	Seq        int    `json:"seq,omitempty"`
}

func (benchArgs) TaskName() string { return "process_order" }

type childParams struct {
	Mode        string        // burn, continuous or latency
	Queue       string        // queue name
	N           int           // burn: tasks to wait for; latency: tasks to time
	Concurrency int           // worker Concurrency; 0 is the default
	PoolConns   int32         // worker pool MaxConns; 0 is pgxpool's default
	NoTTL       bool          // queue.NoExecutionTTL instead of the default
	Duration    time.Duration // continuous: measuring time
	Rate        int           // latency: adds per second
	Timeout     time.Duration // the child's own deadline
	Logs        bool          // worker warnings to stderr
	LimitMax    int           // limit customer_id to this many at once (0: no limit)
}

type childResult struct {
	Elapsed   float64   `json:"elapsed_s"`  // burn: until every outcome was recorded; continuous: the window
	HandledAt float64   `json:"handled_s"`  // burn: until the last handler ran
	Drain     float64   `json:"drain_s"`    // Run's return after its context was cancelled
	Handled   int64     `json:"handled"`    // handlers run (continuous: within the window)
	Inserted  int64     `json:"inserted"`   // continuous: tasks added within the window
	AddErrors int       `json:"add_errors"` // continuous: failed AddMany calls
	VmHWMKB   int64     `json:"vmhwm_kb"`   // peak resident set
	HeapSys   uint64    `json:"heap_sys"`   // Go heap obtained from the OS
	NumGC     uint32    `json:"num_gc"`     // garbage collections
	LatMS     []float64 `json:"lat_ms"`     // latency: Add returned → handler started, sorted
	Missing   int       `json:"missing"`    // latency: tasks not started in time
	CPU       float64   `json:"-"`          // user+system seconds of the whole child process
}

// runChild runs a worker child process and returns what it reported. The
// child is killed if it overruns p.Timeout by more than a grace period.
func runChild(ctx context.Context, url string, p childParams) (childResult, error) {
	var res childResult
	exe, err := os.Executable()
	if err != nil {
		return res, fmt.Errorf("find the bench binary to re-execute: %w", err)
	}
	raw, err := json.Marshal(p)
	if err != nil {
		return res, err
	}
	cctx, cancel := context.WithTimeout(ctx, p.Timeout+15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, exe)
	cmd.Env = append(os.Environ(), childEnv+"="+string(raw), childURLEnv+"="+url)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	if p.Logs {
		cmd.Stderr = os.Stderr
	} else {
		cmd.Stderr = &stderr
	}
	err = cmd.Run()
	if cctx.Err() != nil && ctx.Err() == nil {
		return res, fmt.Errorf("worker process (%s, queue %s) did not finish within %v; killed. stderr: %s",
			p.Mode, p.Queue, p.Timeout+15*time.Second, strings.TrimSpace(stderr.String()))
	}
	if err != nil && ctx.Err() != nil {
		return res, fmt.Errorf("worker process (%s, queue %s) stopped: %w", p.Mode, p.Queue, context.Cause(ctx))
	}
	if err != nil {
		return res, fmt.Errorf("worker process (%s, queue %s): %w: %s", p.Mode, p.Queue, err, strings.TrimSpace(stderr.String()))
	}
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), resultTag); ok {
			if err := json.Unmarshal([]byte(line), &res); err != nil {
				return res, fmt.Errorf("worker process (%s): bad result: %w", p.Mode, err)
			}
			if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
				if res.VmHWMKB == 0 {
					res.VmHWMKB = ru.Maxrss // kilobytes on Linux
				}
				res.CPU = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
			}
			return res, nil
		}
	}
	return res, fmt.Errorf("worker process (%s) printed no result: %s", p.Mode, strings.TrimSpace(stderr.String()))
}

// childMain is main for a worker child process.
func childMain() int {
	var p childParams
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &p); err != nil {
		fmt.Fprintln(os.Stderr, "bench child: bad parameters:", err)
		return 2
	}
	url := os.Getenv(childURLEnv)
	ctx, cancel := context.WithTimeout(context.Background(), p.Timeout)
	defer cancel()
	// A child whose deadline passes reports and exits even if some goroutine
	// is stuck; the parent would kill it a little later anyway.
	go func() {
		<-ctx.Done()
		time.Sleep(5 * time.Second)
		fmt.Fprintf(os.Stderr, "bench child: %s did not finish within %v\n", p.Mode, p.Timeout)
		os.Exit(3)
	}()
	// SHADOWS_BENCH_CPUPROFILE=file writes a CPU profile of the child.
	if path := os.Getenv("SHADOWS_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() {
				pprof.StopCPUProfile()
				_ = f.Close()
			}()
		}
	}
	// SHADOWS_BENCH_MEMPROFILE=file writes the allocations of the child.
	if path := os.Getenv("SHADOWS_BENCH_MEMPROFILE"); path != "" {
		defer func() {
			if f, err := os.Create(path); err == nil {
				_ = pprof.Lookup("allocs").WriteTo(f, 0)
				_ = f.Close()
			}
		}()
	}
	var (
		res childResult
		err error
	)
	switch p.Mode {
	case "burn":
		res, err = childBurn(ctx, url, p)
	case "continuous":
		res, err = childContinuous(ctx, url, p)
	case "latency":
		res, err = childLatency(ctx, url, p)
	case "hold":
		res, err = childHold(ctx, url, p)
	default:
		err = fmt.Errorf("unknown mode %q", p.Mode)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench child: %s: %v\n", p.Mode, err)
		return 1
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.HeapSys, res.NumGC = ms.HeapSys, ms.NumGC
	res.VmHWMKB = vmHWM()
	out, _ := json.Marshal(res)
	fmt.Printf("%s%s\n", resultTag, out)
	return 0
}

func (p childParams) logger() *slog.Logger {
	if p.Logs {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.DiscardHandler)
}

func (p childParams) queueConfig() queue.Config {
	c := queue.Config{Name: p.Queue, Logger: p.logger()}
	if p.NoTTL {
		c.ExecutionTTL = queue.NoExecutionTTL
	}
	return c
}

// startWorker runs a worker on its own pool until the returned stop
// function is called; stop waits for Run to drain, at most drainTimeout.
func startWorker(ctx context.Context, url string, p childParams, handler worker.Handler[benchArgs]) (started time.Time, stop func() (time.Duration, error), err error) {
	pool, err := openPool(ctx, url, p.PoolConns)
	if err != nil {
		return time.Time{}, nil, err
	}
	reg := worker.NewRegistry()
	var policy worker.Policy
	if p.LimitMax > 0 {
		policy.Concurrency = []worker.ConcurrencyLimit{{Arg: "customer_id", Max: p.LimitMax}}
	}
	worker.MustRegister(reg, handler, policy)
	w, err := worker.New(pool, reg, worker.Config{Queue: p.queueConfig(), Concurrency: p.Concurrency, Logger: p.logger()})
	if err != nil {
		pool.Close()
		return time.Time{}, nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	started = time.Now()
	go func() { runErr <- w.Run(wctx) }()
	return started, func() (time.Duration, error) {
		t0 := time.Now()
		cancel()
		const drainTimeout = 60 * time.Second
		select {
		case err := <-runErr:
			pool.Close()
			if err != nil {
				return 0, fmt.Errorf("worker Run: %w", err)
			}
			return time.Since(t0), nil
		case <-time.After(drainTimeout):
			return 0, fmt.Errorf("worker Run did not return within %v of its context being cancelled", drainTimeout)
		}
	}, nil
}

// childBurn burns down p.N tasks that the parent added: the clock runs from
// starting the worker until every handler has run and the worker, stopped,
// has recorded every outcome (checked in the database afterwards).
func childBurn(ctx context.Context, url string, p childParams) (childResult, error) {
	var res childResult
	probe, err := pgx.Connect(ctx, url)
	if err != nil {
		return res, fmt.Errorf("connect: %w", err)
	}
	defer probe.Close(context.WithoutCancel(ctx))
	var handled atomic.Int64
	all := make(chan struct{})
	t0, stop, err := startWorker(ctx, url, p, func(context.Context, *worker.Task[benchArgs]) error {
		if handled.Add(1) == int64(p.N) {
			close(all)
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	select {
	case <-all:
	case <-ctx.Done():
		_, _ = stop()
		return res, fmt.Errorf("%d of %d tasks handled before the deadline", handled.Load(), p.N)
	}
	res.HandledAt = time.Since(t0).Seconds()
	// Every handler has run. A worker that stops records every outcome
	// before Run returns, so the clock stops when it has stopped; the
	// database is then asked whether anything is left, to be sure. (Polling
	// the database until nothing is live instead would add the probe's own
	// cost: right after a burn its scans walk the dead index entries of
	// every row claimed and finished, until a vacuum removes them.)
	drain, err := stop()
	if err != nil {
		return res, err
	}
	res.Elapsed = time.Since(t0).Seconds()
	res.Drain = drain.Seconds()
	res.Handled = handled.Load()
	live, err := liveTasks(ctx, probe, p.Queue)
	if err != nil {
		return res, fmt.Errorf("check outcomes: %w", err)
	}
	if live {
		return res, fmt.Errorf("tasks still scheduled or running after the worker stopped: outcomes were not all recorded")
	}
	return res, nil
}

// liveTasks reports whether any task of the queue is due, waiting for a
// concurrency slot or running, through the partial indexes of those states.
// Future tasks and tasks a hold strike keeps are not counted: scenarios
// leave them in the table on purpose.
func liveTasks(ctx context.Context, conn *pgx.Conn, queueName string) (bool, error) {
	var live bool
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM shadows.tasks WHERE queue = $1 AND state = 'scheduled'
		    AND NOT held AND waiting_on IS NULL AND run_at <= now())
		OR EXISTS (SELECT 1 FROM shadows.tasks WHERE queue = $1 AND state = 'scheduled' AND waiting_on IS NOT NULL)
		OR EXISTS (SELECT 1 FROM shadows.tasks WHERE queue = $1 AND state = 'running')`, queueName).Scan(&live)
	return live, err
}

// childContinuous adds batches of 5,000 tasks in a loop while the worker
// runs, and counts the handlers that ran within p.Duration.
func childContinuous(ctx context.Context, url string, p childParams) (childResult, error) {
	var res childResult
	producerPool, err := openPool(ctx, url, 2)
	if err != nil {
		return res, err
	}
	defer producerPool.Close()
	q, err := queue.New(producerPool, p.queueConfig())
	if err != nil {
		return res, err
	}
	var handled atomic.Int64
	t0, stop, err := startWorker(ctx, url, p, func(context.Context, *worker.Task[benchArgs]) error {
		handled.Add(1)
		return nil
	})
	if err != nil {
		return res, err
	}
	pctx, stopProducer := context.WithCancel(ctx)
	var inserted atomic.Int64
	var addErrs atomic.Int64
	var firstErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		for pctx.Err() == nil {
			entries := make([]queue.Entry, 5000)
			for i := range entries {
				entries[i].Args = benchArgs{OrderID: 12345, CustomerID: "c-1"}
			}
			if _, err := q.AddMany(pctx, entries); err != nil {
				if pctx.Err() == nil {
					addErrs.Add(1)
					if firstErr == nil {
						firstErr = err
					}
					time.Sleep(10 * time.Millisecond)
				}
				continue
			}
			if time.Since(t0) <= p.Duration {
				inserted.Add(int64(len(entries)))
			}
		}
	})
	timer := time.NewTimer(p.Duration)
	select {
	case <-timer.C:
	case <-ctx.Done():
	}
	res.Handled = handled.Load()
	res.Elapsed = time.Since(t0).Seconds()
	stopProducer()
	wg.Wait()
	res.Inserted = inserted.Load()
	res.AddErrors = int(addErrs.Load())
	drain, err := stop()
	if err != nil {
		return res, err
	}
	res.Drain = drain.Seconds()
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	if firstErr != nil {
		fmt.Fprintf(os.Stderr, "bench child: %d AddMany calls failed, the first with: %v\n", res.AddErrors, firstErr)
	}
	return res, nil
}

// childLatency adds one task at a time at p.Rate per second to an idle
// worker with the default configuration and times each from Add returning
// to its handler starting.
func childLatency(ctx context.Context, url string, p childParams) (childResult, error) {
	var res childResult
	producerPool, err := openPool(ctx, url, 2)
	if err != nil {
		return res, err
	}
	defer producerPool.Close()
	q, err := queue.New(producerPool, p.queueConfig())
	if err != nil {
		return res, err
	}
	var mu sync.Mutex
	started := make([]time.Time, p.N)
	var count atomic.Int64
	warm := make(chan struct{}, 1)
	allDone := make(chan struct{})
	p.Concurrency = 0 // the default configuration
	_, stop, err := startWorker(ctx, url, p, func(_ context.Context, t *worker.Task[benchArgs]) error {
		now := time.Now()
		i := t.Args.Seq - 1
		if i < 0 || i >= len(started) {
			select {
			case warm <- struct{}{}:
			default:
			}
			return nil
		}
		mu.Lock()
		started[i] = now
		mu.Unlock()
		if count.Add(1) == int64(len(started)) {
			close(allDone)
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	// Warm up: one task through the whole path, then let the worker idle.
	if _, err := q.Add(ctx, benchArgs{OrderID: 1, CustomerID: "warm-up"}, nil); err != nil {
		_, _ = stop()
		return res, fmt.Errorf("add the warm-up task: %w", err)
	}
	select {
	case <-warm:
	case <-time.After(10 * time.Second):
		_, _ = stop()
		return res, errors.New("the warm-up task did not start within 10s")
	}
	time.Sleep(500 * time.Millisecond)

	added := make([]time.Time, p.N)
	tick := time.NewTicker(time.Second / time.Duration(p.Rate))
	defer tick.Stop()
	for i := range p.N {
		select {
		case <-tick.C:
		case <-ctx.Done():
			_, _ = stop()
			return res, ctx.Err()
		}
		args := benchArgs{OrderID: 12345, CustomerID: "c-1", Seq: i + 1}
		if _, err := q.Add(ctx, args, &queue.AddOpts{Key: "lat-" + strconv.Itoa(i)}); err != nil {
			_, _ = stop()
			return res, fmt.Errorf("add task %d: %w", i, err)
		}
		added[i] = time.Now()
	}
	select {
	case <-allDone:
	case <-time.After(5 * time.Second):
	}
	if _, err := stop(); err != nil {
		return res, err
	}
	mu.Lock()
	defer mu.Unlock()
	for i, s := range started {
		if s.IsZero() {
			res.Missing++
			continue
		}
		res.LatMS = append(res.LatMS, float64(s.Sub(added[i]).Microseconds())/1000)
	}
	slices.Sort(res.LatMS)
	if len(res.LatMS) == 0 {
		return res, errors.New("no task started")
	}
	return res, nil
}

// vmHWM returns this process's peak resident set in kilobytes, 0 if
// /proc is not there.
func vmHWM() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb
			}
		}
	}
	return 0
}

// childHold adds one task that holds the only slot of customer "one" and
// p.N tasks that wait on it, then keeps the worker running for p.Duration.
func childHold(ctx context.Context, url string, p childParams) (childResult, error) {
	var res childResult
	pool, err := openPool(ctx, url, 2)
	if err != nil {
		return res, err
	}
	defer pool.Close()
	q, err := queue.New(pool, p.queueConfig())
	if err != nil {
		return res, err
	}
	_, stop, err := startWorker(ctx, url, p, func(ctx context.Context, t *worker.Task[benchArgs]) error {
		if t.Args.Seq == -1 {
			<-ctx.Done() // the holder: runs until the worker's tasks are cancelled
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	if _, err := q.Add(ctx, benchArgs{CustomerID: "one", Seq: -1}, &queue.AddOpts{Key: "holder"}); err != nil {
		_, _ = stop()
		return res, err
	}
	entries := make([]queue.Entry, p.N)
	for i := range entries {
		entries[i].Args = benchArgs{CustomerID: "one", Seq: i}
		entries[i].When = time.Now().Add(10 * time.Millisecond) // after the holder
	}
	if _, err := q.AddMany(ctx, entries); err != nil {
		_, _ = stop()
		return res, err
	}
	select {
	case <-time.After(p.Duration):
	case <-ctx.Done():
	}
	// The holder never ends by itself: cancel it so the worker can drain.
	if err := q.Cancel(context.WithoutCancel(ctx), "holder"); err != nil {
		_, _ = stop()
		return res, err
	}
	drain, err := stop()
	res.Drain = drain.Seconds()
	return res, err
}
