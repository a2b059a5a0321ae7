package worker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

type Echo struct {
	Text string `json:"text"`
}

func (Echo) TaskName() string { return "echo" }

type Block struct {
	ID string `json:"id"`
}

func (Block) TaskName() string { return "block" }

type Count struct {
	N int `json:"n"`
}

func (Count) TaskName() string { return "count" }

type Mystery struct {
	Clue string `json:"clue"`
}

func (Mystery) TaskName() string { return "mystery" }

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type bundle struct {
	pool *pgxpool.Pool
	q    *queue.Queue
	reg  *worker.Registry
	cfg  worker.Config
	logs *syncBuffer
}

func setup(t *testing.T) *bundle {
	t.Helper()
	pool := pgtest.Pool(t)
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	qcfg := queue.Config{Name: pgtest.QueueName(t), Logger: logger}
	q, err := queue.New(pool, qcfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("worker log:\n%s", logs.String())
		}
	})
	return &bundle{
		pool: pool,
		q:    q,
		reg:  worker.NewRegistry(),
		logs: logs,
		cfg: worker.Config{
			Queue:         qcfg,
			Name:          "test-worker",
			CheckInterval: 50 * time.Millisecond,
			Logger:        logger,
		},
	}
}

func (b *bundle) worker(t *testing.T) *worker.Worker {
	t.Helper()
	w, err := worker.New(b.pool, b.reg, b.cfg)
	require.NoError(t, err)
	return w
}

// runUntilFinished runs a worker until the queue is empty, bounded in time.
func (b *bundle) runUntilFinished(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	require.NoError(t, b.worker(t).RunUntilFinished(ctx))
	require.NoError(t, ctx.Err(), "the queue did not finish in time")
}

// start runs a worker in the background until the test ends.
func (b *bundle) start(t *testing.T) *worker.Worker {
	t.Helper()
	w := b.worker(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Error("worker did not stop")
		}
	})
	return w
}

func (b *bundle) wait(t *testing.T, key string) (*queue.Execution, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	return b.q.Wait(ctx, key)
}

// eventually polls cond every 10ms for up to 20s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRunsTasksAndRecordsResults(t *testing.T) {
	t.Parallel()
	b := setup(t)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		if task.Args.Text == "fail" {
			return errors.New("asked to fail")
		}
		return task.SetResult(map[string]any{"echo": task.Args.Text, "attempt": task.Attempt, "worker": task.Worker})
	}, worker.Policy{})
	ctx := t.Context()
	_, err := b.q.Add(ctx, Echo{Text: "hello"}, &queue.AddOpts{Key: "ok"})
	require.NoError(t, err)
	_, err = b.q.Add(ctx, Echo{Text: "fail"}, &queue.AddOpts{Key: "bad"})
	require.NoError(t, err)
	b.runUntilFinished(t)

	ex, err := b.wait(t, "ok")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
	require.Equal(t, "test-worker", ex.Worker)
	require.False(t, ex.StartedAt.IsZero())
	require.False(t, ex.FinishedAt.Before(ex.StartedAt))
	require.JSONEq(t, `{"echo":"hello","attempt":1,"worker":"test-worker"}`, string(ex.Result))

	type echoed struct {
		Echo string `json:"echo"`
	}
	v, err := queue.Result[echoed](ctx, b.q, "ok")
	require.NoError(t, err)
	require.Equal(t, "hello", v.Echo)

	ex, err = b.wait(t, "bad")
	var te *queue.TaskError
	require.ErrorAs(t, err, &te)
	require.Equal(t, "asked to fail", te.Message)
	require.Equal(t, queue.StateFailed, ex.State)
	require.Equal(t, "asked to fail", ex.Error)
}

// Touchy's arguments panic while they are decoded or printed.
type Touchy struct {
	Mood Mood `json:"mood" shadows:"logged"`
}

func (Touchy) TaskName() string { return "touchy" }

type Mood string

func (m *Mood) UnmarshalJSON(b []byte) error {
	if string(b) == `"explosive"` {
		panic("cannot decode an explosive mood")
	}
	*m = Mood(strings.Trim(string(b), `"`))
	return nil
}

func (m Mood) String() string {
	if m == "grumpy" {
		panic("cannot print a grumpy mood")
	}
	return string(m)
}

// A panic while arguments are decoded (before the handler) fails that task
// only; a panic while its call is rendered for the log costs nothing.
func TestPanicsOutsideTheHandler(t *testing.T) {
	t.Parallel()
	b := setup(t)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Touchy]) error {
		if task.Args.Mood == "grumpy" {
			return errors.New("grumpy") // logged with its call, which cannot be printed
		}
		return nil
	}, worker.Policy{})
	ctx := t.Context()
	for _, mood := range []string{"explosive", "grumpy", "calm"} {
		_, err := b.pool.Exec(ctx, `INSERT INTO shadows.tasks (queue, key, task, args) VALUES ($1, $2, 'touchy', jsonb_build_object('mood', $2::text))`,
			b.q.Name(), mood)
		require.NoError(t, err)
	}
	b.runUntilFinished(t)

	ex, err := b.wait(t, "explosive")
	require.Error(t, err)
	require.Equal(t, queue.StateFailed, ex.State)
	require.Contains(t, ex.Error, "panic: cannot decode an explosive mood")
	ex, err = b.wait(t, "grumpy")
	require.Error(t, err)
	require.Equal(t, queue.StateFailed, ex.State)
	require.Contains(t, ex.Error, "grumpy")
	ex, err = b.wait(t, "calm")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
}

func TestPanicsAndBadArgumentsFailOnlyTheirTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Count]) error {
		if task.Args.N < 0 {
			panic("negative count")
		}
		return nil
	}, worker.Policy{})
	ctx := t.Context()
	_, err := b.q.Add(ctx, Count{N: -1}, &queue.AddOpts{Key: "panics"})
	require.NoError(t, err)
	_, err = b.q.Add(ctx, Count{N: 1}, &queue.AddOpts{Key: "fine"})
	require.NoError(t, err)
	// A row whose arguments do not fit the registered type.
	_, err = b.pool.Exec(ctx, `INSERT INTO shadows.tasks (queue, key, task, args) VALUES ($1, 'garbled', 'count', '{"n": "not a number"}')`, b.q.Name())
	require.NoError(t, err)
	b.runUntilFinished(t)

	ex, err := b.wait(t, "panics")
	require.Error(t, err)
	require.Equal(t, queue.StateFailed, ex.State)
	require.Contains(t, ex.Error, "panic: negative count")
	require.Contains(t, b.logs.String(), "goroutine", "the stack is logged")

	ex, err = b.wait(t, "garbled")
	require.Error(t, err)
	require.Equal(t, queue.StateFailed, ex.State)
	require.Contains(t, ex.Error, "count")
	require.Contains(t, ex.Error, "Count.n", "the error names the field")

	ex, err = b.wait(t, "fine")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
}

func TestUnknownTasks(t *testing.T) {
	t.Parallel()
	t.Run("default fallback drops them", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		_, err := b.q.Add(t.Context(), Mystery{Clue: "x"}, &queue.AddOpts{Key: "m"})
		require.NoError(t, err)
		b.runUntilFinished(t)
		ex, err := b.wait(t, "m")
		require.NoError(t, err)
		require.Equal(t, queue.StateCompleted, ex.State)
		require.Contains(t, b.logs.String(), `unknown task \"mystery\" — dropping`)
	})
	t.Run("custom fallback gets the raw arguments", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		var got worker.RawArgs
		b.cfg.Fallback = func(ctx context.Context, task *worker.Task[worker.RawArgs]) error {
			got = task.Args
			return fmt.Errorf("%w: %s", worker.ErrUnknownTask, task.Args.Name)
		}
		_, err := b.q.Add(t.Context(), Mystery{Clue: "x"}, &queue.AddOpts{Key: "m"})
		require.NoError(t, err)
		b.runUntilFinished(t)
		require.Equal(t, "mystery", got.Name)
		require.JSONEq(t, `{"clue":"x"}`, string(got.JSON))
		ex, err := b.wait(t, "m")
		require.Error(t, err)
		require.Equal(t, queue.StateFailed, ex.State)
		require.Contains(t, ex.Error, "unknown task: mystery")
	})
}

func TestCancelRunningTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	started := make(chan string, 2)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Block]) error {
		started <- task.Args.ID
		<-ctx.Done()
		if task.Args.ID == "ignores" {
			return nil // swallows the cancellation
		}
		return ctx.Err()
	}, worker.Policy{})
	b.start(t)
	ctx := t.Context()
	for _, id := range []string{"obeys", "ignores"} {
		_, err := b.q.Add(ctx, Block{ID: id}, &queue.AddOpts{Key: id})
		require.NoError(t, err)
		require.Equal(t, id, <-started)
		ex, err := b.q.Execution(ctx, id)
		require.NoError(t, err)
		require.Equal(t, queue.StateRunning, ex.State)
		require.NoError(t, b.q.Cancel(ctx, id))
	}
	ex, err := b.wait(t, "obeys")
	require.ErrorIs(t, err, queue.ErrCancelled)
	require.Equal(t, queue.StateCancelled, ex.State)
	ex, err = b.wait(t, "ignores")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State, "a handler that ignores the cancellation completes")
}

// As docket does (#336), a cancel frees a running task's key at once: the
// record reads cancelled, Add stores a new run, and the old handler, still
// winding down, can neither record its end over the new run nor be
// confused with it by a cancel.
func TestCancelFreesTheKeyOfARunningTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	started := make(chan string, 3)
	release := map[string]chan struct{}{"old": make(chan struct{}), "new": make(chan struct{})}
	once := map[string]*sync.Once{"old": {}, "new": {}}
	free := func(id string) { once[id].Do(func() { close(release[id]) }) }
	var ends ledger
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Block]) error {
		started <- task.Args.ID
		<-release[task.Args.ID] // the old run ignores its cancellation until released
		ends.add(task.Args.ID)
		if task.Args.ID == "old" {
			return ctx.Err() // would record "cancelled" over the new run if it could
		}
		return nil
	}, worker.Policy{})
	b.start(t)
	// A failed check must not leave the handlers blocked: the worker's
	// drain, a cleanup registered before this one, would wait for them.
	t.Cleanup(func() { free("old"); free("new") })
	ctx := t.Context()
	_, err := b.q.Add(ctx, Block{ID: "old"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	require.Equal(t, "old", <-started)
	require.NoError(t, b.q.Cancel(ctx, "k"))

	ex, err := b.q.Execution(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, queue.StateCancelled, ex.State, "cancelled at once, as docket records it")
	require.False(t, ex.FinishedAt.IsZero(), "the cancel's time is recorded")
	snap, err := b.q.Snapshot(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, snap.RunningCount, "its handler still runs: the snapshot counts it until it returns")
	require.Equal(t, 1, snap.Total)

	again, err := b.q.Add(ctx, Block{ID: "new"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	require.Equal(t, queue.DispositionScheduled, again.Disposition, "the key is free while the old handler winds down")
	require.EqualValues(t, 2, again.Generation)
	require.Equal(t, "new", <-started, "the new run starts beside the old one")
	first := snap.Running[0].Started
	snap, err = b.q.Snapshot(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, snap.RunningCount, "the key's row is the new run's: the old one winding down is not counted")
	require.False(t, snap.Running[0].Started.Equal(first), "the run counted is the new one")

	// The old run ends while the new one runs, so only the generation
	// tells the old outcome from the new run's. Outcomes are recorded in
	// the order the runs end: once the new run's is recorded, the old
	// one's has been dealt with.
	free("old")
	eventually(t, "the old handler returns", func() bool { runs, _ := ends.snapshot(); return len(runs) == 1 })
	free("new")
	ex, err = b.wait(t, "k")
	require.NoError(t, err, "the new run's record: %+v", ex)
	require.EqualValues(t, 2, ex.Generation, "the old run recorded nothing over the new one")
	require.Equal(t, queue.StateCompleted, ex.State)
}

// A cancel frees the key of a run holding concurrency slots too, but its
// slots stay its own until its handler returns: a new run of the key waits
// for them, so a handler that ignores the cancel never runs past the limit
// beside it.
func TestCancelledRunKeepsItsSlotsUntilItReturns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	started := make(chan string, 3)
	release := make(chan struct{})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Block]) error {
		started <- task.Args.ID
		if task.Args.ID == "old" {
			<-release // ignores its cancellation until released
		}
		return nil
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Max: 1}}})
	b.start(t)
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	ctx := t.Context()
	_, err := b.q.Add(ctx, Block{ID: "old"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	require.Equal(t, "old", <-started)
	require.NoError(t, b.q.Cancel(ctx, "k"))
	ex, err := b.q.Execution(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, queue.StateCancelled, ex.State)

	again, err := b.q.Add(ctx, Block{ID: "new"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	require.Equal(t, queue.DispositionScheduled, again.Disposition, "the cancel freed the key")
	eventually(t, "the new run is claimed and decided", func() bool {
		ex, err := b.q.Execution(ctx, "k")
		return err == nil && ex.WaitingOn != "" || len(started) > 0
	})
	require.Empty(t, started, "the new run must wait for the old run's slot")

	unblock()
	require.Equal(t, "new", <-started)
	ex, err = b.wait(t, "k")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
	require.EqualValues(t, 2, ex.Generation)
}

func TestCancelledDueTaskNeverRuns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var ran atomic.Int64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Count]) error {
		ran.Add(1)
		return nil
	}, worker.Policy{})
	ctx := t.Context()
	for i := range 50 {
		key := fmt.Sprint(i)
		_, err := b.q.Add(ctx, Count{N: i}, &queue.AddOpts{Key: key})
		require.NoError(t, err)
		if i%2 == 0 {
			require.NoError(t, b.q.Cancel(ctx, key))
		}
	}
	b.runUntilFinished(t)
	require.EqualValues(t, 25, ran.Load())
	for i := range 50 {
		ex, err := b.q.Execution(ctx, fmt.Sprint(i))
		require.NoError(t, err)
		want := queue.StateCompleted
		if i%2 == 0 {
			want = queue.StateCancelled
		}
		require.Equal(t, want, ex.State, "task %d", i)
	}
}

func TestReplacedTaskRunsOnlyTheNewCopy(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var mu sync.Mutex
	var seen []string
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		mu.Lock()
		seen = append(seen, task.Args.Text)
		mu.Unlock()
		return nil
	}, worker.Policy{})
	ctx := t.Context()
	_, err := b.q.Add(ctx, Echo{Text: "old"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	_, err = b.q.Replace(ctx, Echo{Text: "new"}, queue.AddOpts{Key: "k", When: time.Now()})
	require.NoError(t, err)
	b.runUntilFinished(t)
	require.Equal(t, []string{"new"}, seen)
}

func TestReplaceWhileRunningKeepsTheNewRecord(t *testing.T) {
	t.Parallel()
	b := setup(t)
	release := make(chan struct{})
	started := make(chan string, 2)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		started <- task.Args.Text
		if task.Args.Text == "old" {
			<-release
			return errors.New("the old copy failed")
		}
		return task.SetResult("new result")
	}, worker.Policy{})
	b.cfg.Concurrency = 2
	b.start(t)
	ctx := t.Context()
	_, err := b.q.Add(ctx, Echo{Text: "old"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	require.Equal(t, "old", <-started)
	ex, err := b.q.Replace(ctx, Echo{Text: "new"}, queue.AddOpts{Key: "k", When: time.Now()})
	require.NoError(t, err)
	require.EqualValues(t, 2, ex.Generation)
	require.Equal(t, "new", <-started, "the replacement runs while the old copy still runs")
	ex, err = b.wait(t, "k")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
	close(release)
	// The old copy's failure must not overwrite the new record.
	eventually(t, "the old copy has finished", func() bool {
		var running int
		_ = b.pool.QueryRow(ctx, `SELECT count(*) FROM shadows.tasks WHERE queue = $1 AND state = 'running'`, b.q.Name()).Scan(&running)
		return running == 0
	})
	time.Sleep(100 * time.Millisecond) // give the old outcome's batch time to be written
	ex, err = b.q.Execution(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
	require.JSONEq(t, `"new result"`, string(ex.Result))
	require.Empty(t, ex.Error)
}

func TestFutureTasksRunOnTime(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var mu sync.Mutex
	startedAt := map[string]time.Time{}
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		mu.Lock()
		startedAt[task.Key] = time.Now()
		mu.Unlock()
		return nil
	}, worker.Policy{})
	ctx := t.Context()
	when := time.Now().Add(300 * time.Millisecond)
	_, err := b.q.Add(ctx, Echo{}, &queue.AddOpts{Key: "later", When: when})
	require.NoError(t, err)
	_, err = b.q.Add(ctx, Echo{}, &queue.AddOpts{Key: "now"})
	require.NoError(t, err)
	b.runUntilFinished(t) // RunUntilFinished waits for future tasks too
	require.Len(t, startedAt, 2)
	require.False(t, startedAt["later"].Before(when), "a future task never starts early")
}

func TestRecordsWithoutTTLAreDeleted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.cfg.Queue.ExecutionTTL = queue.NoExecutionTTL
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error { return nil }, worker.Policy{})
	_, err := b.q.Add(t.Context(), Echo{}, &queue.AddOpts{Key: "gone"})
	require.NoError(t, err)
	b.runUntilFinished(t)
	_, err = b.q.Execution(t.Context(), "gone")
	require.ErrorIs(t, err, queue.ErrNotFound)
}

func TestExpiredRecordsAreCollected(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.cfg.Queue.ExecutionTTL = 200 * time.Millisecond
	b.cfg.Queue.HeartbeatInterval = 100 * time.Millisecond
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error { return nil }, worker.Policy{})
	_, err := b.q.Add(t.Context(), Echo{}, &queue.AddOpts{Key: "expires"})
	require.NoError(t, err)
	b.start(t)
	ex, err := b.wait(t, "expires")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
	eventually(t, "the expired record is deleted", func() bool {
		_, err := b.q.Execution(t.Context(), "expires")
		return errors.Is(err, queue.ErrNotFound)
	})
}

func TestConcurrencyIsBoundedAndEachTaskRunsOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const tasks, concurrency = 400, 7
	var running, peak atomic.Int64
	var mu sync.Mutex
	runs := map[int]int{}
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Count]) error {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		mu.Lock()
		runs[task.Args.N]++
		mu.Unlock()
		time.Sleep(time.Millisecond)
		return nil
	}, worker.Policy{})
	entries := make([]queue.Entry, tasks)
	for i := range entries {
		entries[i] = queue.Entry{Args: Count{N: i}}
	}
	_, err := b.q.AddMany(t.Context(), entries)
	require.NoError(t, err)

	// Two workers in this process share the queue.
	b.cfg.Concurrency = concurrency
	var wg sync.WaitGroup
	for i := range 2 {
		cfg := b.cfg
		cfg.Name = fmt.Sprintf("w%d", i)
		w, err := worker.New(b.pool, b.reg, cfg)
		require.NoError(t, err)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			require.NoError(t, w.RunUntilFinished(ctx))
		})
	}
	wg.Wait()
	require.Len(t, runs, tasks)
	for n, c := range runs {
		require.Equal(t, 1, c, "task %d ran %d times", n, c)
	}
	require.LessOrEqual(t, peak.Load(), int64(2*concurrency))
	require.Positive(t, peak.Load())
}

func TestSingleWorkerConcurrencyLimit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var running, peak atomic.Int64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Count]) error {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
		return nil
	}, worker.Policy{})
	entries := make([]queue.Entry, 60)
	for i := range entries {
		entries[i] = queue.Entry{Args: Count{N: i}}
	}
	_, err := b.q.AddMany(t.Context(), entries)
	require.NoError(t, err)
	b.cfg.Concurrency = 3
	b.runUntilFinished(t)
	require.EqualValues(t, 3, peak.Load())
}

func TestTimeoutFailsTheTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Block]) error {
		<-ctx.Done()
		return ctx.Err()
	}, worker.Policy{Timeout: 100 * time.Millisecond})
	_, err := b.q.Add(t.Context(), Block{}, &queue.AddOpts{Key: "slow"})
	require.NoError(t, err)
	b.runUntilFinished(t)
	ex, err := b.wait(t, "slow")
	require.Error(t, err)
	require.Equal(t, queue.StateFailed, ex.State)
	require.Contains(t, ex.Error, "exceeded timeout of 100ms")
}

// A handler that ignores its time limit and returns nil still fails, as
// in docket; an Extend after the limit passed changes nothing.
func TestTimeoutIgnoredByTheHandlerStillFails(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var left time.Duration
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Block]) error {
		<-ctx.Done()
		task.Timeout.Extend(time.Hour)
		left = task.Timeout.Remaining()
		return nil
	}, worker.Policy{Timeout: 50 * time.Millisecond})
	_, err := b.q.Add(t.Context(), Block{}, &queue.AddOpts{Key: "stubborn"})
	require.NoError(t, err)
	b.runUntilFinished(t)
	ex, err := b.wait(t, "stubborn")
	require.Error(t, err)
	require.Equal(t, queue.StateFailed, ex.State)
	require.Contains(t, ex.Error, "exceeded timeout of 50ms")
	require.LessOrEqual(t, left, time.Duration(0), "an Extend after the limit passed moves nothing")
}

func TestRunAtMost(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var runs atomic.Int64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Count]) error {
		runs.Add(1)
		// Reschedule itself under its own key, as a perpetual task does.
		_, err := task.Queue.Replace(ctx, Count{N: task.Args.N + 1}, queue.AddOpts{Key: task.Key, When: time.Now()})
		return err
	}, worker.Policy{})
	_, err := b.q.Add(t.Context(), Count{}, &queue.AddOpts{Key: "loop"})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	require.NoError(t, b.worker(t).RunAtMost(ctx, map[string]int{"loop": 3}))
	require.EqualValues(t, 3, runs.Load())
}

func TestWorkersAreListed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.cfg.Queue.HeartbeatInterval = 50 * time.Millisecond
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error { return nil }, worker.Policy{})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Count]) error { return nil }, worker.Policy{})
	w := b.worker(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	eventually(t, "the worker is listed", func() bool {
		ws, err := b.q.Workers(t.Context())
		require.NoError(t, err)
		return len(ws) == 1
	})
	ws, err := b.q.Workers(t.Context())
	require.NoError(t, err)
	require.Equal(t, "test-worker", ws[0].Name)
	require.Equal(t, []string{"count", "echo", "fail", "sleep", "trace"}, ws[0].Tasks)
	tw, err := b.q.TaskWorkers(t.Context(), "echo")
	require.NoError(t, err)
	require.Len(t, tw, 1)
	tw, err = b.q.TaskWorkers(t.Context(), "nobody-runs-this")
	require.NoError(t, err)
	require.Empty(t, tw)

	cancel()
	require.NoError(t, <-done)
	ws, err = b.q.Workers(t.Context())
	require.NoError(t, err)
	require.Empty(t, ws, "a stopped worker removes itself")
}

func TestShutdownDrainsRunningTasks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	started := make(chan struct{}, 3)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Block]) error {
		started <- struct{}{}
		time.Sleep(300 * time.Millisecond)
		return ctx.Err() // not cancelled by the shutdown
	}, worker.Policy{})
	for i := range 3 {
		_, err := b.q.Add(t.Context(), Block{}, &queue.AddOpts{Key: fmt.Sprint(i)})
		require.NoError(t, err)
	}
	w := b.worker(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	for range 3 {
		<-started
	}
	cancel()
	require.NoError(t, <-done)
	for i := range 3 {
		ex, err := b.q.Execution(t.Context(), fmt.Sprint(i))
		require.NoError(t, err)
		require.Equal(t, queue.StateCompleted, ex.State, "task %d", i)
	}
}

func TestRegistrationAndConfigErrors(t *testing.T) {
	t.Parallel()
	reg := worker.NewRegistry()
	h := func(ctx context.Context, task *worker.Task[Echo]) error { return nil }
	require.NoError(t, worker.Register(reg, h, worker.Policy{}))
	require.ErrorIs(t, worker.Register(reg, h, worker.Policy{}), worker.ErrInvalidRegistration, "twice")
	require.ErrorIs(t, worker.Register[Count](reg, nil, worker.Policy{}), worker.ErrInvalidRegistration)
	require.ErrorIs(t, worker.Register(reg, func(ctx context.Context, task *worker.Task[Count]) error { return nil },
		worker.Policy{Timeout: -time.Second}), worker.ErrInvalidRegistration)
	require.Panics(t, func() { worker.MustRegister(reg, h, worker.Policy{}) })

	pool := pgtest.Pool(t)
	bad := []worker.Config{
		{Concurrency: -1},
		{RedeliveryTimeout: -time.Second},
		{CheckInterval: -time.Second},
		{Queue: queue.Config{Name: "bad\x01name"}},
		// A plain number where a duration was meant is nanoseconds: claims
		// that always timed out, or a renewal ticker that panicked.
		{RedeliveryTimeout: 5},
		{RedeliveryTimeout: 999 * time.Millisecond},
		{CheckInterval: 5},
		{SchedulingResolution: 5},
		{ReconnectionDelay: 5},
		{ReseedInterval: 5},
		{Concurrency: worker.MaxConcurrency + 1},
	}
	for _, c := range bad {
		_, err := worker.New(pool, reg, c)
		require.ErrorIs(t, err, worker.ErrInvalidConfig, "%+v", c)
	}
	_, err := worker.New(nil, reg, worker.Config{})
	require.ErrorIs(t, err, worker.ErrInvalidConfig)
	w, err := worker.New(pool, reg, worker.Config{})
	require.NoError(t, err)
	require.Contains(t, w.Name(), "#")
	require.Equal(t, queue.DefaultName, w.Queue().Name())
}

func TestPickupIsPromptWithNotifications(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.cfg.CheckInterval = time.Hour // only a notification can wake the worker
	got := make(chan time.Time, 1)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		got <- time.Now()
		return nil
	}, worker.Policy{})
	w := b.start(t)
	eventually(t, "the worker listens", func() bool {
		ws, _ := w.Queue().Workers(t.Context())
		return len(ws) == 1
	})
	time.Sleep(50 * time.Millisecond) // past the worker's first idle poll
	_, err := b.q.Add(t.Context(), Echo{}, nil)
	require.NoError(t, err)
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("an idle worker was not woken by the notification")
	}
}

// A key's generation starts again at 1 once its record is gone, so an old
// run that outlived the record and the key's next run can share key and
// generation, here on the same worker. Each run's outcome must still end
// only its own run: the old run returning does not end the new one's
// record, and the new run is not cancelled with it.
func TestOldRunSharingKeyAndGenerationEndsOnlyItself(t *testing.T) {
	t.Parallel()
	b := setup(t)
	started := make(chan string, 3)
	ended := make(chan string, 3)
	release := map[string]chan struct{}{"old": make(chan struct{}), "new": make(chan struct{}), "marker": nil}
	cancelled := make(chan string, 3)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Block]) error {
		started <- task.Args.ID
		defer func() { ended <- task.Args.ID }()
		if release[task.Args.ID] == nil {
			return nil
		}
		select {
		case <-release[task.Args.ID]:
			return nil
		case <-ctx.Done():
			cancelled <- task.Args.ID
			return ctx.Err()
		}
	}, worker.Policy{})
	b.start(t)
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release["new"]) }) })
	ctx := t.Context()
	_, err := b.q.Add(ctx, Block{ID: "old"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	require.Equal(t, "old", <-started)
	// Replaced by a copy due later, whose record then goes (as an expired
	// record is collected): the key has no record while the old run goes on.
	_, err = b.q.Replace(ctx, Block{ID: "later"}, queue.AddOpts{Key: "k", When: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	_, err = b.pool.Exec(ctx, `DELETE FROM shadows.tasks WHERE queue = $1 AND key = 'k'`, b.q.Name())
	require.NoError(t, err)
	ex, err := b.q.Add(ctx, Block{ID: "new"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	require.EqualValues(t, 1, ex.Generation, "a new record starts at generation 1")
	require.Equal(t, "new", <-started)

	close(release["old"])
	require.Equal(t, "old", <-ended)
	// Outcomes are recorded in order: once a later one is, the old run's
	// has been dealt with.
	_, err = b.q.Add(ctx, Block{ID: "marker"}, &queue.AddOpts{Key: "marker"})
	require.NoError(t, err)
	_, err = b.wait(t, "marker")
	require.NoError(t, err)
	ex, err = b.q.Execution(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, queue.StateRunning, ex.State, "the old run's end did not end the new run")
	require.Empty(t, cancelled, "the new run was not cancelled with the old one")

	once.Do(func() { close(release["new"]) })
	ex, err = b.wait(t, "k")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
	require.EqualValues(t, 1, ex.Generation)
}

// Values PostgreSQL cannot store (a NUL byte, invalid UTF-8, a result with
// the JSON escape \u0000) fail only their own run, with an error saying
// why, and the outcomes recorded in the same batch are recorded: a refused
// batch once stayed pending forever, its runs running.
func TestUnstorableOutcomeFailsOnlyItsRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		switch task.Args.Text {
		case "nul result":
			return task.SetResult("a\x00b")
		case "bad error":
			return errors.New("bad \x00 and \xff bytes")
		}
		return nil
	}, worker.Policy{})
	b.cfg.Concurrency = 10
	ctx := t.Context()
	texts := []string{"plain 1", "nul result", "plain 2", "bad error", "plain 3", "plain 4"}
	for _, text := range texts {
		_, err := b.q.Add(ctx, Echo{Text: text}, &queue.AddOpts{Key: text})
		require.NoError(t, err)
	}
	b.runUntilFinished(t)
	for _, text := range texts {
		ex, err := b.q.Execution(ctx, text)
		require.NoError(t, err, text)
		switch text {
		case "nul result":
			require.Equal(t, queue.StateFailed, ex.State)
			require.Contains(t, ex.Error, `result cannot be stored: JSON with the escape \u0000`)
		case "bad error":
			require.Equal(t, queue.StateFailed, ex.State)
			require.Equal(t, "bad  and \uFFFD bytes", ex.Error)
		default:
			require.Equal(t, queue.StateCompleted, ex.State, text)
		}
	}
}

// As docket's cancel stops whatever runs under the key, cancelling a key
// whose running copy was replaced stops that copy too, not only the
// scheduled replacement.
func TestCancelStopsTheReplacedCopyStillRunning(t *testing.T) {
	t.Parallel()
	b := setup(t)
	started := make(chan struct{}, 1)
	stopped := make(chan error, 1)
	pinged := make(chan struct{}, 1)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		switch task.Args.Text {
		case "old":
			started <- struct{}{}
			<-ctx.Done()
			stopped <- ctx.Err()
			return ctx.Err()
		case "ping":
			signalTest(pinged)
		}
		return nil
	}, worker.Policy{})
	// Only the notification stops the replaced copy (lease renewals stop
	// runs of the current generation only): the worker must be listening
	// before the cancel is sent. After its first claim only a NOTIFY wakes
	// it, so a ping that runs says it listens.
	b.cfg.CheckInterval = time.Minute
	b.start(t)
	ctx := t.Context()
	waitUntilListening(t, b, pinged)
	_, err := b.q.Add(ctx, Echo{Text: "old"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	<-started
	_, err = b.q.Replace(ctx, Echo{Text: "new"}, queue.AddOpts{Key: "k", When: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	require.NoError(t, b.q.Cancel(ctx, "k"))
	select {
	case err := <-stopped:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("the replaced copy still runs after the cancel")
	}
	ex, err := b.q.Execution(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, queue.StateCancelled, ex.State, "the replacement is cancelled")
	require.EqualValues(t, 2, ex.Generation)
}

// Lease renewals have a connection of their own: handlers that hold every
// connection of the worker's pool (slow queries on the application's pool,
// which the worker shares) once kept renewals waiting until the leases
// lapsed, and another worker ran the tasks a second time.
func TestHandlersHoldingThePoolDoNotStopRenewals(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg, err := pgxpool.ParseConfig(pgtest.URL(t))
	require.NoError(t, err)
	cfg.MaxConns = 2
	small, err := pgxpool.NewWithConfig(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(small.Close)
	var mu sync.Mutex
	runs := map[string][]string{}
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Block]) error {
		mu.Lock()
		runs[task.Key] = append(runs[task.Key], task.Worker)
		mu.Unlock()
		_, err := small.Exec(ctx, "SELECT pg_sleep(4)") // holds one of the pool's two connections
		return err
	}, worker.Policy{})
	for i := range 2 {
		_, err := b.q.Add(t.Context(), Block{}, &queue.AddOpts{Key: fmt.Sprint(i)})
		require.NoError(t, err)
	}
	acfg := b.cfg
	acfg.Name, acfg.Concurrency, acfg.RedeliveryTimeout = "A", 2, 2*time.Second
	a, err := worker.New(small, b.reg, acfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { _ = a.Run(ctx) })
	eventually(t, "A runs both", func() bool { mu.Lock(); defer mu.Unlock(); return len(runs) == 2 })
	bcfg := b.cfg
	bcfg.Name, bcfg.RedeliveryTimeout = "B", 2*time.Second
	other, err := worker.New(b.pool, b.reg, bcfg)
	require.NoError(t, err)
	wg.Go(func() { _ = other.Run(ctx) })
	for i := range 2 {
		ex, err := b.wait(t, fmt.Sprint(i))
		require.NoError(t, err)
		require.Equal(t, queue.StateCompleted, ex.State)
	}
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, map[string][]string{"0": {"A"}, "1": {"A"}}, runs, "each ran once, on A")
}

// RunUntilFinished tells a queue that finished from a context that ended
// first: callers waiting for a queue to drain must not read a timeout as
// done.
func TestRunUntilFinishedReportsAContextThatEndedFirst(t *testing.T) {
	t.Parallel()
	b := setup(t)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error { return nil }, worker.Policy{})
	_, err := b.q.Add(t.Context(), Echo{Text: "later"}, &queue.AddOpts{Key: "later", When: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	err = b.worker(t).RunUntilFinished(ctx)
	require.ErrorIs(t, err, worker.ErrUnfinished)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	ctx, cancel = context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	err = b.worker(t).RunAtMost(ctx, map[string]int{"later": 1})
	require.ErrorIs(t, err, worker.ErrUnfinished)
}

// A worker runs once. A second call, of whichever Run method, fails at
// once and leaves the running one alone (the race detector watches).
func TestAWorkerRunsOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error { return nil }, worker.Policy{})
	w := b.start(t)
	eventually(t, "the worker runs", w.Healthy)
	require.ErrorIs(t, w.Run(t.Context()), worker.ErrAlreadyStarted)
	require.ErrorIs(t, w.RunUntilFinished(t.Context()), worker.ErrAlreadyStarted)
	require.ErrorIs(t, w.RunAtMost(t.Context(), map[string]int{"x": 1}), worker.ErrAlreadyStarted)
	_, err := b.q.Add(t.Context(), Echo{Text: "hi"}, &queue.AddOpts{Key: "after"})
	require.NoError(t, err)
	ex, err := b.wait(t, "after")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State, "the first run goes on")
}

// Garbage collection does not hold up heartbeats: a collection stuck behind
// a lock (or busy with a large expired backlog) stopped the worker's
// heartbeats, so its peers saw it as gone. Not parallel: it locks a table
// every queue's admission uses.
func TestGarbageCollectionDoesNotDelayHeartbeats(t *testing.T) {
	b := setup(t)
	b.cfg.Queue.HeartbeatInterval = 100 * time.Millisecond
	b.cfg.Queue.ExecutionTTL = 4 * time.Second // collections every second
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error { return nil }, worker.Policy{})
	tx, err := b.pool.Begin(t.Context())
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.Background()) }()
	_, err = tx.Exec(t.Context(), `LOCK TABLE shadows.cooldowns IN ACCESS EXCLUSIVE MODE`)
	require.NoError(t, err)

	b.start(t)
	lastSeen := func() time.Time {
		ws, err := b.q.Workers(t.Context())
		require.NoError(t, err)
		if len(ws) == 0 {
			return time.Time{}
		}
		return ws[0].LastSeen
	}
	eventually(t, "the worker announced itself", func() bool { return !lastSeen().IsZero() })
	waitForLockWait(t, b, "DeleteExpiredAdmissions")
	before := lastSeen()
	eventually(t, "heartbeats go on while it waits", func() bool {
		return lastSeen().Sub(before) >= 300*time.Millisecond
	})
	require.NoError(t, tx.Rollback(t.Context()))
}

// A worker that runs for less than a collection interval (30s under the
// default ExecutionTTL of 15 minutes) still deletes expired records: it
// collects as soon as its first heartbeat goes through.
func TestAShortRunCollectsExpiredRecords(t *testing.T) {
	t.Parallel()
	b := setup(t)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error { return nil }, worker.Policy{})
	expiredRecord(t, b, "old")

	b.start(t)
	eventually(t, "the expired record is deleted", func() bool {
		_, err := b.q.Execution(t.Context(), "old")
		return errors.Is(err, queue.ErrNotFound)
	})
}

// A RunUntilFinished that finds nothing to do returns at once, possibly
// before any collection ran while it lasted (here its heartbeat is held
// up, so none does): it collects on its way out, so short job-style runs
// leave no expired records behind.
func TestRunUntilFinishedCollectsExpiredRecords(t *testing.T) {
	t.Parallel()
	b := setup(t)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error { return nil }, worker.Policy{})
	ctx := t.Context()
	expiredRecord(t, b, "old")

	// The worker's own row, locked: its heartbeats wait, and so no
	// collection starts after one.
	_, err := b.pool.Exec(ctx, `INSERT INTO shadows.workers (queue, name, tasks, started_at, last_seen)
		VALUES ($1, $2, '{}', now(), now())`, b.q.Name(), b.cfg.Name)
	require.NoError(t, err)
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.Background()) }()
	_, err = tx.Exec(ctx, `SELECT 1 FROM shadows.workers WHERE queue = $1 AND name = $2 FOR UPDATE`, b.q.Name(), b.cfg.Name)
	require.NoError(t, err)

	done := make(chan error, 1)
	go func() { done <- b.worker(t).RunUntilFinished(ctx) }()
	// On its way out the run removes its row, and waits for the lock there:
	// its last collection is behind it.
	waitForLockWait(t, b, "RemoveWorker")
	_, err = b.q.Execution(ctx, "old")
	require.ErrorIs(t, err, queue.ErrNotFound, "the expired record outlived the run")
	require.NoError(t, tx.Rollback(ctx))
	require.NoError(t, <-done)
}

// signalTest sends on ch without blocking.
func signalTest(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// A cancel stops every run of its key, including one a replace left
// running. When the worker missed the notification that says so (its
// listener was down), lease renewal stops that run too.
func TestRenewalStopsAReplacedCopyWhoseCancelWasMissed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.cfg.RedeliveryTimeout = 2 * time.Second // renewals every half second
	started := make(chan struct{}, 1)
	stopped := make(chan error, 1)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		if task.Args.Text == "old" {
			started <- struct{}{}
			<-ctx.Done()
			stopped <- ctx.Err()
			return ctx.Err()
		}
		return nil
	}, worker.Policy{})
	b.start(t)
	ctx := t.Context()
	_, err := b.q.Add(ctx, Echo{Text: "old"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	<-started
	_, err = b.q.Replace(ctx, Echo{Text: "new"}, queue.AddOpts{Key: "k", When: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	// What Cancel writes, without its notification.
	_, err = b.pool.Exec(ctx, `UPDATE shadows.tasks SET state = 'cancelled', cancel_requested = true,
		finished_at = now(), expires_at = now() + interval '15 minutes'
		WHERE queue = $1 AND key = 'k'`, b.q.Name())
	require.NoError(t, err)
	select {
	case err := <-stopped:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(15 * time.Second):
		t.Fatal("the replaced copy still runs after the cancel")
	}
}

// Clear removes tasks that have not started and stops no run: a run that a
// replace left running goes on after its key's replacement is cleared.
func TestClearLeavesAReplacedCopyRunning(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.cfg.RedeliveryTimeout = 2 * time.Second // renewals every half second
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	ended := make(chan error, 1)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		if task.Args.Text == "old" {
			started <- struct{}{}
			select {
			case <-ctx.Done():
				ended <- ctx.Err()
				return ctx.Err()
			case <-release:
				ended <- nil
				return nil
			}
		}
		return nil
	}, worker.Policy{})
	b.start(t)
	ctx := t.Context()
	_, err := b.q.Add(ctx, Echo{Text: "old"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	<-started
	_, err = b.q.Replace(ctx, Echo{Text: "new"}, queue.AddOpts{Key: "k", When: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	n, err := b.q.Clear(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
	time.Sleep(2 * time.Second) // several renewals
	close(release)
	require.NoError(t, <-ended, "the run went on")
}

// waitUntilListening adds pings (Echo{Text: "ping"}, whose handler signals
// pinged) until one runs. With a long CheckInterval only a notification
// wakes the worker after its first claim, so a ping that runs says the
// worker listens.
func waitUntilListening(t *testing.T, b *bundle, pinged <-chan struct{}) {
	t.Helper()
	for i := 0; ; i++ {
		_, err := b.q.Add(t.Context(), Echo{Text: "ping"}, nil)
		require.NoError(t, err)
		select {
		case <-pinged:
			return
		case <-time.After(time.Second):
			require.Less(t, i, 20, "the worker never woke on a notification")
		}
	}
}

// waitForLockWait waits until a statement named name (its sqlc name)
// waits for a lock.
func waitForLockWait(t *testing.T, b *bundle, name string) {
	t.Helper()
	eventually(t, name+" waits for a lock", func() bool {
		var waiting int
		require.NoError(t, b.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'`, "name: "+name).Scan(&waiting))
		return waiting > 0
	})
}

// expiredRecord runs a task under key to its end and makes its record
// expired.
func expiredRecord(t *testing.T, b *bundle, key string) {
	t.Helper()
	_, err := b.q.Add(t.Context(), Echo{}, &queue.AddOpts{Key: key})
	require.NoError(t, err)
	b.runUntilFinished(t)
	_, err = b.pool.Exec(t.Context(), `UPDATE shadows.tasks SET expires_at = now() - interval '1 second'
		WHERE queue = $1 AND key = $2`, b.q.Name(), key)
	require.NoError(t, err)
}
