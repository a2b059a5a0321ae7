package reliability_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/internal/reliability"
	"github.com/shadows-go/shadows/migrations"
	"github.com/shadows-go/shadows/queue"
)

// raceEnabled is set by race_test.go when the tests run with -race; the
// worker program is then built with -race too.
var raceEnabled bool

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestWorkerProcesses builds the worker program once and runs every
// scenario as a parallel subtest; the program is removed when all of them
// are done.
func TestWorkerProcesses(t *testing.T) {
	bin := buildTestworker(t)
	t.Run("ExactlyOnceAcrossProcesses", func(t *testing.T) { t.Parallel(); testExactlyOnce(t, bin) })
	t.Run("RedeliveryAfterSIGKILL", func(t *testing.T) { t.Parallel(); testRedeliveryAfterKill(t, bin) })
	t.Run("LeaseRenewal", func(t *testing.T) { t.Parallel(); testLeaseRenewal(t, bin) })
	t.Run("TerminatedConnections", func(t *testing.T) { t.Parallel(); testTerminatedConnections(t, bin) })
	t.Run("GracefulDrain", func(t *testing.T) { t.Parallel(); testGracefulDrain(t, bin) })
}

// testExactlyOnce: three worker processes share 10,000 tasks; each task
// runs exactly once, and every process does some of the work.
func testExactlyOnce(t *testing.T, bin string) {
	const (
		tasks       = 10_000
		processes   = 3
		concurrency = 8
	)
	ctx := testContext(t, 2*time.Minute)
	pool := pgtest.Pool(t)
	createLedger(t, pool)
	name := pgtest.QueueName(t)
	q := newQueue(t, pool, name)

	var procs []*proc
	for i := range processes {
		procs = append(procs, startWorker(t, bin, workerOpts{
			url: pgtest.URL(t), queue: name, name: fmt.Sprintf("w%d", i+1),
			concurrency: concurrency, redelivery: 5 * time.Second,
		}))
	}
	// Add the tasks only once every process is up, so that all compete.
	waitForWorkers(t, q, processes, 30*time.Second)

	entries := make([]queue.Entry, tasks)
	keys := make([]string, tasks)
	for i := range entries {
		keys[i] = fmt.Sprintf("job-%05d", i)
		entries[i] = queue.Entry{Args: reliability.Job{}, Key: keys[i]}
	}
	began := time.Now()
	added, err := q.AddMany(ctx, entries)
	require.NoError(t, err)
	require.Len(t, added, tasks)
	for _, e := range added {
		require.Equal(t, queue.DispositionScheduled, e.Disposition, e.Key)
	}
	t.Logf("added %d tasks in %v", tasks, time.Since(began).Round(time.Millisecond))

	waitCompleted(t, pool, name, tasks, 90*time.Second, procs...)
	t.Logf("%d tasks completed by %d processes in %v", tasks, processes, time.Since(began).Round(time.Millisecond))

	stopAll(t, 30*time.Second, procs...)

	runs := readLedger(t, pool, name)
	byKey := runsByKey(runs)
	require.Len(t, byKey, tasks, "distinct keys in the ledger: every task must have run")
	if dups := duplicates(byKey); len(dups) > 0 {
		t.Fatalf("%d tasks ran more than once (%d runs for %d tasks), the first ones:\n%s",
			len(dups), len(runs), tasks, describeRuns(t, pool, name, dups, byKey))
	}
	perWorker := map[string]int{}
	for _, r := range runs {
		require.True(t, r.finished, "run of %s on %s never finished", r.key, r.worker)
		require.False(t, r.redelivered, "run of %s on %s was a redelivery", r.key, r.worker)
		perWorker[r.worker]++
	}
	t.Logf("tasks per process: %v", perWorker)
	for _, p := range procs {
		require.Positive(t, perWorker[p.name], "process %s ran no task (share: %v)", p.name, perWorker)
	}

	for _, e := range executions(t, q, keys) {
		require.Equal(t, queue.StateCompleted, e.State, e.Key)
		require.False(t, e.Redelivered, e.Key)
		require.Equal(t, 1, e.Attempt, e.Key)
		require.Equal(t, byKey[e.Key][0].worker, e.Worker, "worker recorded for %s", e.Key)
		require.False(t, e.FinishedAt.IsZero(), e.Key)
	}
}

// testRedeliveryAfterKill: a worker killed with SIGKILL mid-task has its
// task run again by another worker once the lease lapses.
func testRedeliveryAfterKill(t *testing.T, bin string) {
	const redelivery = 2 * time.Second
	ctx := testContext(t, time.Minute)
	pool := pgtest.Pool(t)
	createLedger(t, pool)
	name := pgtest.QueueName(t)
	q := newQueue(t, pool, name)

	a := startWorker(t, bin, workerOpts{
		url: pgtest.URL(t), queue: name, name: "A", concurrency: 2, redelivery: redelivery,
		mode: "hang", logLevel: "info",
	})
	const key = "victim"
	_, err := q.Add(ctx, reliability.Job{}, &queue.AddOpts{Key: key})
	require.NoError(t, err)

	eventually(t, 30*time.Second, "A starts the task", func(ctx context.Context) (bool, string, error) {
		runs, err := queryLedger(ctx, pool, name)
		return len(runs) == 1 && runs[0].worker == "A", fmt.Sprintf("ledger: %v", runs), err
	}, a)
	// Wait until A has renewed its lease at least once, so the lease that
	// lapses is a renewed one.
	eventually(t, 10*time.Second, "A renews its lease", func(ctx context.Context) (bool, string, error) {
		var renewed bool
		err := pool.QueryRow(ctx, `SELECT lease_expires_at > started_at + make_interval(secs => $3)
			FROM shadows.tasks WHERE queue = $1 AND key = $2`, name, key, redelivery.Seconds()).Scan(&renewed)
		return renewed, "lease not renewed yet", err
	}, a)
	e, err := q.Execution(ctx, key)
	require.NoError(t, err)
	require.Equal(t, queue.StateRunning, e.State)
	require.Equal(t, "A", e.Worker)

	a.kill(t)
	killed := time.Now()
	b := startWorker(t, bin, workerOpts{
		url: pgtest.URL(t), queue: name, name: "B", concurrency: 2, redelivery: redelivery, logLevel: "info",
	})

	// The lease lapses at most one redelivery timeout after the kill; B looks
	// for lapsed leases every quarter of it. Allow generously for a loaded
	// machine and a race-enabled process start.
	bound := redelivery + 8*time.Second
	eventually(t, bound, "B completes the redelivered task", func(ctx context.Context) (bool, string, error) {
		e, err := q.Execution(ctx, key)
		if err != nil {
			return false, "", err
		}
		return e.State == queue.StateCompleted, fmt.Sprintf("state %s on %q", e.State, e.Worker), nil
	}, b)
	took := time.Since(killed)
	t.Logf("task completed by B %v after A was killed (redelivery timeout %v)", took.Round(time.Millisecond), redelivery)

	e, err = q.Execution(ctx, key)
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, e.State)
	require.True(t, e.Redelivered, "execution should be marked redelivered")
	require.Equal(t, "B", e.Worker)
	t.Logf("execution: attempt %d, redelivered %v, worker %s, started %v, finished %v",
		e.Attempt, e.Redelivered, e.Worker, e.StartedAt.Format(time.StampMilli), e.FinishedAt.Format(time.StampMilli))

	runs := readLedger(t, pool, name)
	require.Len(t, runs, 2, "ledger: two starts expected, got %v", runs)
	require.Equal(t, "A", runs[0].worker)
	require.False(t, runs[0].finished, "A's run cannot have finished")
	require.False(t, runs[0].redelivered)
	require.Equal(t, "B", runs[1].worker)
	require.True(t, runs[1].finished, "B's run should have finished")
	require.True(t, runs[1].redelivered, "B's handler should see Task.Redelivered")

	stopAll(t, 15*time.Second, b)
}

// testLeaseRenewal: a task that runs three times longer than the redelivery
// timeout, with two workers watching for lapsed leases, runs exactly once.
func testLeaseRenewal(t *testing.T, bin string) {
	const (
		redelivery = time.Second
		taskTime   = 3 * time.Second
		tasks      = 4
	)
	ctx := testContext(t, time.Minute)
	pool := pgtest.Pool(t)
	createLedger(t, pool)
	name := pgtest.QueueName(t)
	q := newQueue(t, pool, name)

	var procs []*proc
	for _, n := range []string{"W1", "W2"} {
		procs = append(procs, startWorker(t, bin, workerOpts{
			url: pgtest.URL(t), queue: name, name: n, concurrency: 2, redelivery: redelivery, logLevel: "info",
		}))
	}
	waitForWorkers(t, q, len(procs), 30*time.Second)

	var keys []string
	for i := range tasks {
		key := fmt.Sprintf("long-%d", i)
		keys = append(keys, key)
		_, err := q.Add(ctx, reliability.Job{SleepMS: int(taskTime / time.Millisecond)}, &queue.AddOpts{Key: key})
		require.NoError(t, err)
	}
	waitCompleted(t, pool, name, tasks, 30*time.Second, procs...)
	stopAll(t, 15*time.Second, procs...)

	runs := readLedger(t, pool, name)
	require.Len(t, runs, tasks, "each long task should run once: %v", runs)
	for _, r := range runs {
		require.True(t, r.finished, r.key)
		require.False(t, r.redelivered, r.key)
	}
	for _, e := range executions(t, q, keys) {
		require.Equal(t, queue.StateCompleted, e.State, e.Key)
		require.False(t, e.Redelivered, "%s was redelivered: its lease was not renewed in time", e.Key)
		require.GreaterOrEqual(t, e.FinishedAt.Sub(e.StartedAt), taskTime, e.Key)
	}
}

// testTerminatedConnections: while a worker works through 2,000 short tasks,
// every connection to its database but the test's own is terminated several
// times. The worker resumes on its own, no task is lost and every one ends
// completed; a task may run more than once.
func testTerminatedConnections(t *testing.T, bin string) {
	const (
		tasks       = 2000
		sleepMS     = 8
		concurrency = 4
		kills       = 5
		killEvery   = 400 * time.Millisecond
	)
	ctx := testContext(t, 2*time.Minute)
	// A database of its own: terminating every connection to it disturbs no
	// other test.
	dbURL := pgtest.EmptyDatabase(t)
	setup, err := pgxpool.New(ctx, dbURL)
	require.NoError(t, err)
	require.NoError(t, migrations.Up(ctx, setup))
	setup.Close()
	pool, err := pgxpool.New(ctx, dbURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	createLedger(t, pool)
	killer, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = killer.Close(context.Background()) })

	name := pgtest.QueueName(t)
	q := newQueue(t, pool, name)
	w := startWorker(t, bin, workerOpts{
		url: dbURL, queue: name, name: "W", concurrency: concurrency, redelivery: 2 * time.Second,
	})
	waitForWorkers(t, q, 1, 30*time.Second)

	entries := make([]queue.Entry, tasks)
	keys := make([]string, tasks)
	for i := range entries {
		keys[i] = fmt.Sprintf("job-%04d", i)
		entries[i] = queue.Entry{Args: reliability.Job{SleepMS: sleepMS}, Key: keys[i]}
	}
	_, err = q.AddMany(ctx, entries)
	require.NoError(t, err)
	began := time.Now()

	var started int
	eventually(t, 30*time.Second, "the worker gets going", func(ctx context.Context) (bool, string, error) {
		err := pool.QueryRow(ctx, `SELECT count(DISTINCT key) FROM public.reliability_ledger WHERE queue = $1`, name).Scan(&started)
		return started >= 50, fmt.Sprintf("%d tasks started", started), err
	}, w)

	var terminated []int
	for i := range kills {
		if i > 0 {
			time.Sleep(killEvery)
			// Kill only once the worker has reconnected: a worker still
			// backing off has no backend to kill.
			eventually(t, 30*time.Second, "the worker reconnects", func(ctx context.Context) (bool, string, error) {
				var n int
				err := killer.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
					WHERE datname = current_database() AND application_name LIKE 'testworker%'`).Scan(&n)
				return n > 0, fmt.Sprintf("%d worker backends", n), err
			}, w)
		}
		var n, done int
		err := killer.QueryRow(ctx, `
			SELECT (SELECT count(*) FROM (
			            SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			            WHERE datname = current_database() AND pid <> pg_backend_pid()) k),
			       (SELECT count(*) FROM shadows.tasks WHERE queue = $1 AND state = 'completed')`, name).Scan(&n, &done)
		require.NoError(t, err)
		terminated = append(terminated, n)
		t.Logf("kill %d at %v: terminated %d backends; %d of %d tasks completed before",
			i+1, time.Since(began).Round(time.Millisecond), n, done, tasks)
		if i == 0 {
			require.Less(t, done, tasks/2, "the tasks ran too fast for the kills to land mid-work")
		}
	}
	for i, n := range terminated {
		require.Positive(t, n, "kill %d terminated no backend", i+1)
	}

	waitCompleted(t, pool, name, tasks, 60*time.Second, w)
	t.Logf("all %d tasks completed %v after they were added", tasks, time.Since(began).Round(time.Millisecond))
	stopAll(t, 30*time.Second, w)

	runs := readLedger(t, pool, name)
	byKey := runsByKey(runs)
	require.Len(t, byKey, tasks, "every task must have run at least once")
	var dups []string
	redelivered := 0
	for _, r := range runs {
		if r.redelivered {
			redelivered++
		}
	}
	for _, k := range keys {
		rs := byKey[k]
		require.NotEmpty(t, rs, "task %s never ran", k)
		require.True(t, slices.ContainsFunc(rs, func(r ledgerRun) bool { return r.finished }), "no run of %s finished", k)
		if len(rs) > 1 {
			dups = append(dups, fmt.Sprintf("%s×%d", k, len(rs)))
		}
	}
	t.Logf("DUPLICATES: %d runs for %d tasks: %d extra runs (%d tasks ran more than once: %v); %d runs were redeliveries",
		len(runs), tasks, len(runs)-tasks, len(dups), dups, redelivered)

	for _, e := range executions(t, q, keys) {
		require.Equal(t, queue.StateCompleted, e.State, e.Key)
	}
	if t.Failed() || testing.Verbose() {
		t.Logf("worker output (warnings):\n%s", tail(w.output(), 40))
	}
}

// testGracefulDrain: SIGTERM while tasks run lets them finish and record
// their outcome before the process exits 0; they are never run again. The
// drain outlasts the lease, so it proves the leases are renewed meanwhile:
// a second worker is running and would take any lapsed task.
func testGracefulDrain(t *testing.T, bin string) {
	const (
		redelivery  = time.Second
		taskTime    = 3 * time.Second
		concurrency = 4
		quick       = 6
	)
	ctx := testContext(t, time.Minute)
	pool := pgtest.Pool(t)
	createLedger(t, pool)
	name := pgtest.QueueName(t)
	q := newQueue(t, pool, name)

	a := startWorker(t, bin, workerOpts{
		url: pgtest.URL(t), queue: name, name: "A", concurrency: concurrency, redelivery: redelivery, logLevel: "info",
	})
	waitForWorkers(t, q, 1, 30*time.Second)
	var slow []string
	for i := range concurrency {
		key := fmt.Sprintf("slow-%d", i)
		slow = append(slow, key)
		_, err := q.Add(ctx, reliability.Job{SleepMS: int(taskTime / time.Millisecond)}, &queue.AddOpts{Key: key})
		require.NoError(t, err)
	}
	eventually(t, 30*time.Second, "A starts every slow task", func(ctx context.Context) (bool, string, error) {
		runs, err := queryLedger(ctx, pool, name)
		return len(runs) == concurrency, fmt.Sprintf("ledger: %v", runs), err
	}, a)

	// A has no free slot: the quick tasks wait for B.
	b := startWorker(t, bin, workerOpts{
		url: pgtest.URL(t), queue: name, name: "B", concurrency: concurrency, redelivery: redelivery, logLevel: "info",
	})
	var quickKeys []string
	for i := range quick {
		key := fmt.Sprintf("quick-%d", i)
		quickKeys = append(quickKeys, key)
		_, err := q.Add(ctx, reliability.Job{}, &queue.AddOpts{Key: key})
		require.NoError(t, err)
	}

	a.signal(t, syscall.SIGTERM)
	stopped := time.Now()
	code := a.wait(t, taskTime+15*time.Second)
	t.Logf("A exited %v after SIGTERM with code %d", time.Since(stopped).Round(time.Millisecond), code)
	require.Equal(t, 0, code, "A should exit 0 after draining")

	// A recorded every slow task before it exited.
	for _, e := range executions(t, q, slow) {
		require.Equal(t, queue.StateCompleted, e.State, e.Key)
		require.Equal(t, "A", e.Worker, e.Key)
		require.False(t, e.Redelivered, e.Key)
	}

	waitCompleted(t, pool, name, concurrency+quick, 30*time.Second, b)
	stopAll(t, 15*time.Second, b)

	byKey := runsByKey(readLedger(t, pool, name))
	for _, k := range slow {
		require.Len(t, byKey[k], 1, "slow task %s should have run once: %v", k, byKey[k])
		require.Equal(t, "A", byKey[k][0].worker)
		require.True(t, byKey[k][0].finished, k)
	}
	for _, k := range quickKeys {
		require.Len(t, byKey[k], 1, "quick task %s should have run once: %v", k, byKey[k])
		require.Equal(t, "B", byKey[k][0].worker, "A must not claim after SIGTERM")
	}
	for _, e := range executions(t, q, slow) {
		require.Equal(t, queue.StateCompleted, e.State, e.Key)
		require.Equal(t, "A", e.Worker, e.Key)
		require.False(t, e.Redelivered, e.Key)
	}
}

// ---- the worker processes ----

// buildTestworker builds the worker program into the test's temporary
// directory, with the race detector if the tests have it.
func buildTestworker(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "testworker")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/shadows-go/shadows/internal/reliability/testworker")
	began := time.Now()
	out, err := exec.Command("go", args...).CombinedOutput()
	require.NoError(t, err, "go %s:\n%s", strings.Join(args, " "), out)
	t.Logf("built testworker (race detector: %v) in %v", raceEnabled, time.Since(began).Round(time.Millisecond))
	return bin
}

type workerOpts struct {
	url, queue, name string
	concurrency      int
	redelivery       time.Duration
	mode             string        // normal (default) or hang
	logLevel         string        // warn by default
	every            time.Duration // interval of the perpetual task; the program's default if zero
	maxConns         int           // connection pool size; concurrency + 3 if zero
}

// proc is a running worker process.
type proc struct {
	name   string
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{} // closed when the process has exited
	state  *os.ProcessState
}

// startWorker starts a worker process. It is killed, if still running, when
// the test ends; its output is logged if the test failed.
func startWorker(t *testing.T, bin string, o workerOpts) *proc {
	t.Helper()
	if o.mode == "" {
		o.mode = "normal"
	}
	if o.logLevel == "" {
		o.logLevel = "warn"
	}
	cmd := exec.Command(bin,
		"-database", o.url,
		"-queue", o.queue,
		"-name", o.name,
		"-concurrency", fmt.Sprint(o.concurrency),
		"-redelivery", o.redelivery.String(),
		"-mode", o.mode,
		"-log-level", o.logLevel,
	)
	if o.every > 0 {
		cmd.Args = append(cmd.Args, "-every", o.every.String())
	}
	if o.maxConns > 0 {
		cmd.Args = append(cmd.Args, "-max-conns", fmt.Sprint(o.maxConns))
	}
	p := &proc{name: o.name, cmd: cmd, out: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	require.NoError(t, cmd.Start(), "start worker %s", o.name)
	go func() {
		_ = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
		out := p.output()
		switch {
		case strings.Contains(out, "WARNING: DATA RACE") || strings.Contains(out, "panic:"):
			t.Errorf("worker %s reported a data race or panicked:\n%s", p.name, out)
		case strings.Contains(out, "SQLSTATE 40P01"):
			// The workers' own statements must never deadlock: each
			// deadlock stalls a worker for deadlock_timeout and loses a
			// lease renewal or a batch of outcomes.
			t.Errorf("worker %s hit database deadlocks:\n%s", p.name, grepLines(out, "40P01", 20))
		case t.Failed():
			t.Logf("output of worker %s (pid %d, %v):\n%s", p.name, cmd.Process.Pid, p.state, tail(out, 200))
		}
	})
	return p
}

func (p *proc) output() string { return p.out.String() }

func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig), "signal %v to worker %s", sig, p.name)
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	p.signal(t, syscall.SIGKILL)
	p.wait(t, 10*time.Second)
}

// wait waits for the process to exit and returns its exit code (-1 if a
// signal ended it).
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
		return p.state.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("worker %s did not exit within %v; output:\n%s", p.name, timeout, tail(p.output(), 100))
		return 0
	}
}

// stopAll sends SIGTERM to every process and requires each to exit 0.
func stopAll(t *testing.T, timeout time.Duration, procs ...*proc) {
	t.Helper()
	for _, p := range procs {
		p.signal(t, syscall.SIGTERM)
	}
	for _, p := range procs {
		code := p.wait(t, timeout)
		require.Equal(t, 0, code, "worker %s exit code after SIGTERM; output:\n%s", p.name, tail(p.output(), 50))
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// grepLines returns the first n lines of s that contain substr.
func grepLines(s, substr string, n int) string {
	var out []string
	for line := range strings.Lines(s) {
		if strings.Contains(line, substr) && len(out) < n {
			out = append(out, strings.TrimRight(line, "\n"))
		}
	}
	return strings.Join(out, "\n")
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[… %d lines]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// ---- the database ----

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func newQueue(t *testing.T, pool *pgxpool.Pool, name string) *queue.Queue {
	t.Helper()
	q, err := queue.New(pool, queue.Config{Name: name})
	require.NoError(t, err)
	return q
}

func createLedger(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, reliability.LedgerDDL)
		return err
	})
	require.NoError(t, err, "create the ledger table")
}

// ledgerRun is one run of a task, as its handler recorded it. The times are
// the database server's.
type ledgerRun struct {
	key, worker string
	attempt     int
	redelivered bool
	finished    bool

	runID, task, customer, region string
	dueAt, startedAt, finishedAt  time.Time // dueAt and finishedAt may be zero
}

func (r ledgerRun) String() string {
	return fmt.Sprintf("{%s on %s attempt %d redelivered %v finished %v}", r.key, r.worker, r.attempt, r.redelivered, r.finished)
}

// queryLedger returns the runs of queue, in the order they started.
func queryLedger(ctx context.Context, pool *pgxpool.Pool, queueName string) ([]ledgerRun, error) {
	rows, err := pool.Query(ctx, `
		SELECT key, worker, attempt, redelivered, finished_at IS NOT NULL,
		       run_id, task, customer, region, due_at, started_at, finished_at
		FROM public.reliability_ledger WHERE queue = $1 ORDER BY started_at, run_id`, queueName)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (ledgerRun, error) {
		var r ledgerRun
		var due, fin *time.Time
		err := row.Scan(&r.key, &r.worker, &r.attempt, &r.redelivered, &r.finished,
			&r.runID, &r.task, &r.customer, &r.region, &due, &r.startedAt, &fin)
		if due != nil {
			r.dueAt = *due
		}
		if fin != nil {
			r.finishedAt = *fin
		}
		return r, err
	})
}

func readLedger(t *testing.T, pool *pgxpool.Pool, queueName string) []ledgerRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runs, err := queryLedger(ctx, pool, queueName)
	require.NoError(t, err, "read the ledger")
	return runs
}

// duplicates returns the keys that ran more than once, sorted.
func duplicates(byKey map[string][]ledgerRun) []string {
	var dups []string
	for k, rs := range byKey {
		if len(rs) > 1 {
			dups = append(dups, k)
		}
	}
	slices.Sort(dups)
	return dups
}

// describeRuns shows, for the first few keys, every run in the ledger and
// the task's row in shadows.tasks, for failure messages.
func describeRuns(t *testing.T, pool *pgxpool.Pool, queueName string, keys []string, byKey map[string][]ledgerRun) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var b strings.Builder
	for _, k := range keys[:min(len(keys), 15)] {
		fmt.Fprintf(&b, "  %s:\n", k)
		rows, err := pool.Query(ctx, `SELECT worker, redelivered, attempt,
				to_char(started_at, 'HH24:MI:SS.MS'), coalesce(to_char(finished_at, 'HH24:MI:SS.MS'), '-')
			FROM public.reliability_ledger WHERE queue = $1 AND key = $2 ORDER BY started_at`, queueName, k)
		if err == nil {
			for rows.Next() {
				var w, st, fin string
				var red bool
				var att int
				if rows.Scan(&w, &red, &att, &st, &fin) == nil {
					fmt.Fprintf(&b, "    run on %s: redelivered %v, attempt %d, started %s, finished %s\n", w, red, att, st, fin)
				}
			}
			rows.Close()
		}
		var state, worker, started, finished string
		var deliveries int
		err = pool.QueryRow(ctx, `SELECT state::text, coalesce(worker, ''), deliveries,
				coalesce(to_char(started_at, 'HH24:MI:SS.MS'), '-'), coalesce(to_char(finished_at, 'HH24:MI:SS.MS'), '-')
			FROM shadows.tasks WHERE queue = $1 AND key = $2`, queueName, k).Scan(&state, &worker, &deliveries, &started, &finished)
		if err == nil {
			fmt.Fprintf(&b, "    record: %s on %s, deliveries %d, started %s, finished %s\n", state, worker, deliveries, started, finished)
		} else {
			fmt.Fprintf(&b, "    record: %v\n", err)
		}
	}
	return b.String()
}

func runsByKey(runs []ledgerRun) map[string][]ledgerRun {
	m := make(map[string][]ledgerRun)
	for _, r := range runs {
		m[r.key] = append(m[r.key], r)
	}
	return m
}

// waitForWorkers waits until n workers have announced themselves.
func waitForWorkers(t *testing.T, q *queue.Queue, n int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("%d workers announce themselves", n), func(ctx context.Context) (bool, string, error) {
		ws, err := q.Workers(ctx)
		return len(ws) >= n, fmt.Sprintf("%d workers: %v", len(ws), ws), err
	})
}

// waitCompleted waits until n tasks of the queue are recorded completed,
// and fails the test at once if one failed or was cancelled.
func waitCompleted(t *testing.T, pool *pgxpool.Pool, queueName string, n int, timeout time.Duration, procs ...*proc) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("%d tasks complete", n), func(ctx context.Context) (bool, string, error) {
		var completed, bad, live, ran int
		err := pool.QueryRow(ctx, `
			SELECT count(*) FILTER (WHERE state = 'completed'),
			       count(*) FILTER (WHERE state IN ('failed', 'cancelled')),
			       count(*) FILTER (WHERE state IN ('scheduled', 'running')),
			       (SELECT count(*) FROM public.reliability_ledger WHERE queue = $1)
			FROM shadows.tasks WHERE queue = $1`, queueName).Scan(&completed, &bad, &live, &ran)
		if err == nil && bad > 0 {
			t.Errorf("%d tasks failed or were cancelled", bad)
			var msgs []string
			rows, qerr := pool.Query(ctx, `SELECT key, state::text, coalesce(error, '') FROM shadows.tasks
				WHERE queue = $1 AND state IN ('failed', 'cancelled') LIMIT 10`, queueName)
			if qerr == nil {
				for rows.Next() {
					var k, s, e string
					if rows.Scan(&k, &s, &e) == nil {
						msgs = append(msgs, fmt.Sprintf("%s %s: %s", k, s, e))
					}
				}
				rows.Close()
			}
			t.Fatalf("tasks that did not complete: %v", msgs)
		}
		return completed >= n, fmt.Sprintf("%d completed, %d live, %d runs in the ledger", completed, live, ran), err
	}, procs...)
}

// executions reads the execution record of every key through the queue API.
func executions(t *testing.T, q *queue.Queue, keys []string) []*queue.Execution {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out := make([]*queue.Execution, len(keys))
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	const readers = 8
	for r := range readers {
		wg.Go(func() {
			for i := r; i < len(keys); i += readers {
				out[i], errs[i] = q.Execution(ctx, keys[i])
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "execution %s", keys[i])
	}
	return out
}

// eventually polls check until it reports done, and fails the test with the
// last status (and the output of procs) if timeout passes first. Errors from
// check count as not done: the database may be briefly away.
func eventually(t *testing.T, timeout time.Duration, what string, check func(context.Context) (bool, string, error), procs ...*proc) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var status string
	var lastErr error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		done, s, err := check(ctx)
		cancel()
		if err == nil && done {
			return
		}
		if s != "" {
			status = s
		}
		lastErr = err
		if time.Now().After(deadline) {
			var outs strings.Builder
			for _, p := range procs {
				fmt.Fprintf(&outs, "\n--- worker %s:\n%s", p.name, tail(p.output(), 60))
			}
			t.Fatalf("timed out after %v waiting until %s: %s (last error: %v)%s", timeout, what, status, lastErr, outs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
