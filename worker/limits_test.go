package worker_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/db"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

type Export struct {
	UserID int    `json:"user_id"`
	Region string `json:"region"`
	Step   int    `json:"step"`
}

func (Export) TaskName() string { return "export" }

type Backup struct {
	DB string `json:"db"`
}

func (Backup) TaskName() string { return "backup" }

// occupancy tracks how many tasks run per key at once and the peak.
type occupancy struct {
	mu    sync.Mutex
	now   map[string]int
	peak  map[string]int
	order []string
}

func newOccupancy() *occupancy {
	return &occupancy{now: map[string]int{}, peak: map[string]int{}}
}

func (o *occupancy) enter(keys ...string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, k := range keys {
		o.now[k]++
		o.peak[k] = max(o.peak[k], o.now[k])
	}
}

func (o *occupancy) leave(keys ...string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, k := range keys {
		o.now[k]--
	}
}

func (o *occupancy) record(s string) {
	o.mu.Lock()
	o.order = append(o.order, s)
	o.mu.Unlock()
}

func TestConcurrencyLimitsHoldAcrossWorkers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	occ := newOccupancy()
	var total atomic.Int64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Export]) error {
		keys := []string{fmt.Sprintf("user:%d", task.Args.UserID), "region:" + task.Args.Region, "all"}
		occ.enter(keys...)
		defer occ.leave(keys...)
		total.Add(1)
		time.Sleep(3 * time.Millisecond)
		return nil
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{
		{Arg: "user_id", Max: 1},
		{Arg: "region", Max: 3},
	}})
	var entries []queue.Entry
	for i := range 240 {
		entries = append(entries, queue.Entry{Args: Export{UserID: i % 12, Region: fmt.Sprint("r", i%3)}})
	}
	_, err := b.q.AddMany(t.Context(), entries)
	require.NoError(t, err)

	b.cfg.Concurrency = 8
	var wg sync.WaitGroup
	for i := range 3 {
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
	require.EqualValues(t, 240, total.Load(), "every task ran once")
	for k, p := range occ.peak {
		switch {
		case k == "all":
			require.Greater(t, p, 1, "different users ran in parallel")
		case k[:5] == "user:":
			require.Equal(t, 1, p, k)
		default:
			require.LessOrEqual(t, p, 3, k)
		}
	}
	var slots int
	require.NoError(t, b.pool.QueryRow(t.Context(), `SELECT count(*) FROM shadows.slots WHERE queue = $1`, b.q.Name()).Scan(&slots))
	require.Zero(t, slots, "every slot was released\n%s", b.logs.String())
}

func TestWaitersStartInOrderAndCostNoAttempt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	occ := newOccupancy()
	release := make(chan struct{})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Backup]) error {
		occ.record(task.Key)
		if task.Key == "first" {
			<-release
		}
		return nil
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "db", Max: 1}}})
	b.cfg.Concurrency = 10
	b.start(t)
	ctx := t.Context()
	_, err := b.q.Add(ctx, Backup{DB: "main"}, &queue.AddOpts{Key: "first"})
	require.NoError(t, err)
	eventually(t, "the first backup runs", func() bool {
		ex, err := b.q.Execution(ctx, "first")
		return err == nil && ex.State == queue.StateRunning
	})
	for i := range 5 {
		_, err := b.q.Add(ctx, Backup{DB: "main"}, &queue.AddOpts{Key: fmt.Sprint("w", i)})
		require.NoError(t, err)
		eventually(t, "it waits", func() bool {
			ex, err := b.q.Execution(ctx, fmt.Sprint("w", i))
			return err == nil && ex.WaitingOn == "db:main"
		})
	}
	// Another database is not held up.
	_, err = b.q.Add(ctx, Backup{DB: "other"}, &queue.AddOpts{Key: "other"})
	require.NoError(t, err)
	_, err = b.wait(t, "other")
	require.NoError(t, err)

	snap, err := b.q.Snapshot(ctx)
	require.NoError(t, err)
	require.Equal(t, 5, snap.Waiting)
	var running int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT running FROM shadows.concurrency WHERE queue = $1 AND limit_key = 'db:main'`, b.q.Name()).Scan(&running))
	require.Equal(t, 1, running)

	close(release)
	for i := range 5 {
		ex, err := b.wait(t, fmt.Sprint("w", i))
		require.NoError(t, err)
		require.Equal(t, 1, ex.Attempt, "waiting costs no attempt")
		require.False(t, ex.Redelivered)
	}
	occ.mu.Lock()
	defer occ.mu.Unlock()
	require.Equal(t, []string{"first", "other", "w0", "w1", "w2", "w3", "w4"}, occ.order)
}

func TestSlotsAreReleasedHoweverTasksEnd(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var attempts atomic.Int64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Backup]) error {
		switch task.Args.DB {
		case "fails":
			return errors.New("boom")
		case "panics":
			panic("boom")
		case "times-out":
			<-ctx.Done()
			return ctx.Err()
		case "retries":
			if attempts.Add(1) < 3 {
				return errors.New("again")
			}
		}
		return nil
	}, worker.Policy{
		Concurrency: []worker.ConcurrencyLimit{{Max: 1}}, // the task as a whole
		Timeout:     100 * time.Millisecond,
		Retry:       worker.Retry{Attempts: 3},
	})
	for _, db := range []string{"fails", "panics", "times-out", "retries", "fine"} {
		_, err := b.q.Add(t.Context(), Backup{DB: db}, &queue.AddOpts{Key: db})
		require.NoError(t, err)
	}
	b.runUntilFinished(t)
	ex, err := b.wait(t, "fine")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
	ex, err = b.wait(t, "retries")
	require.NoError(t, err)
	require.Equal(t, 3, ex.Attempt)
	var slots int
	require.NoError(t, b.pool.QueryRow(t.Context(), `SELECT count(*) FROM shadows.slots WHERE queue = $1`, b.q.Name()).Scan(&slots))
	require.Zero(t, slots)
}

func TestScopesSeparateKeys(t *testing.T) {
	t.Parallel()
	b := setup(t)
	occ := newOccupancy()
	gate := make(chan struct{})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Backup]) error {
		occ.enter("all")
		defer occ.leave("all")
		<-gate
		return nil
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "db", Max: 1, Scope: "backups"}}})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Export]) error {
		occ.enter("all")
		defer occ.leave("all")
		<-gate
		return nil
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "region", Max: 1, Scope: "exports"}}})
	b.start(t)
	_, err := b.q.Add(t.Context(), Backup{DB: "eu"}, &queue.AddOpts{Key: "b"})
	require.NoError(t, err)
	_, err = b.q.Add(t.Context(), Export{Region: "eu"}, &queue.AddOpts{Key: "e"})
	require.NoError(t, err)
	eventually(t, "both run at once", func() bool {
		occ.mu.Lock()
		defer occ.mu.Unlock()
		return occ.now["all"] == 2
	})
	close(gate)
}

func TestCancelledWaiterNeverRuns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	release := make(chan struct{})
	var ran sync.Map
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Backup]) error {
		ran.Store(task.Key, true)
		if task.Key == "holder" {
			<-release
		}
		return nil
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "db", Max: 1}}})
	b.start(t)
	ctx := t.Context()
	_, err := b.q.Add(ctx, Backup{DB: "x"}, &queue.AddOpts{Key: "holder"})
	require.NoError(t, err)
	eventually(t, "the holder runs", func() bool { _, ok := ran.Load("holder"); return ok })
	_, err = b.q.Add(ctx, Backup{DB: "x"}, &queue.AddOpts{Key: "waiter"})
	require.NoError(t, err)
	eventually(t, "the waiter waits", func() bool {
		ex, err := b.q.Execution(ctx, "waiter")
		return err == nil && ex.WaitingOn != ""
	})
	require.NoError(t, b.q.Cancel(ctx, "waiter"))
	close(release)
	_, err = b.wait(t, "holder")
	require.NoError(t, err)
	ex, err := b.q.Execution(ctx, "waiter")
	require.NoError(t, err)
	require.Equal(t, queue.StateCancelled, ex.State)
	_, ranWaiter := ran.Load("waiter")
	require.False(t, ranWaiter)
}

func TestMissingLimitArgumentFailsTheTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Backup]) error { return nil },
		worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "db", Max: 1}}})
	_, err := b.pool.Exec(t.Context(), `INSERT INTO shadows.tasks (queue, key, task, args) VALUES ($1, 'no-db', 'backup', '{"host": "h", "port": 5432}')`, b.q.Name())
	require.NoError(t, err)
	b.runUntilFinished(t)
	ex, err := b.wait(t, "no-db")
	require.Error(t, err)
	require.Equal(t, queue.StateFailed, ex.State)
	require.Equal(t, `concurrency limit argument "db" not found in task arguments; available: [host, port]`, ex.Error)
}

func TestInvalidConcurrencyLimits(t *testing.T) {
	t.Parallel()
	h := func(ctx context.Context, task *worker.Task[Backup]) error { return nil }
	for name, l := range map[string]worker.ConcurrencyLimit{
		"zero":      {Arg: "db", Max: 0},
		"negative":  {Arg: "db", Max: -1},
		"no such":   {Arg: "database", Max: 1},
		"task zero": {Max: 0},
	} {
		err := worker.Register(worker.NewRegistry(), h, worker.Policy{Concurrency: []worker.ConcurrencyLimit{l}})
		require.ErrorIs(t, err, worker.ErrInvalidRegistration, name)
	}
	err := worker.Register(worker.NewRegistry(), h, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "database", Max: 1}}})
	require.ErrorContains(t, err, `the arguments have no such field (they have db)`)
}

// Slots are held per run, not per task key and generation: a key's
// generation starts again at 1 once its record is deleted, so an old run
// that is still going and the key's new run can share both. Each holds a
// slot of its own, and the old run's release leaves the new one's alone.
// A run superseded by a replace while it was being claimed likewise gets a
// slot of its own, and if it is blocked it parks nothing: the row belongs
// to the run that replaced it. Staged directly against the SQL functions.
func TestSlotsAreHeldPerRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	started := time.Now().UTC().Truncate(time.Microsecond) // the claim time of every staged run
	acquire := func(key string, generation, run int64, limitKey string, max int) []string {
		t.Helper()
		rows, err := b.pool.Query(ctx, `SELECT parked_key FROM shadows.acquire_slots($1, $2, $3, $4, $5, $6, $7, 3600)`,
			b.q.Name(), []string{key}, []int64{generation}, []time.Time{started}, []int64{run}, []string{limitKey}, []int32{int32(max)})
		require.NoError(t, err)
		parked, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		return parked
	}
	held := func(limitKey string) int {
		t.Helper()
		var n int
		err := b.pool.QueryRow(ctx, `SELECT running FROM shadows.concurrency WHERE queue = $1 AND limit_key = $2`,
			b.q.Name(), limitKey).Scan(&n)
		if errors.Is(err, pgx.ErrNoRows) {
			return 0
		}
		require.NoError(t, err)
		return n
	}
	release := func(limitKey string, run int64) {
		t.Helper()
		_, err := b.pool.Exec(ctx, `SELECT shadows.release_slots($1, $2, $3)`, b.q.Name(), []string{limitKey}, []int64{run})
		require.NoError(t, err)
	}

	// Two runs of "k" at generation 1 (an old one still going, and the
	// one after its record was deleted and the key added again).
	require.Empty(t, acquire("k", 1, 101, "shared", 2))
	require.Empty(t, acquire("k", 1, 102, "shared", 2))
	require.Equal(t, 2, held("shared"))
	release("shared", 101)
	require.Equal(t, 1, held("shared"), "the old run's release left the new run's slot")
	release("shared", 102)
	require.Zero(t, held("shared"))

	// "k" was claimed at generation 1, then replaced: generation 2 runs
	// and holds a slot of "full", at most 1.
	_, err := b.q.Add(ctx, Backup{DB: "a"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	_, err = b.q.Replace(ctx, Backup{DB: "b"}, queue.AddOpts{Key: "k", When: time.Now()})
	require.NoError(t, err)
	_, err = b.pool.Exec(ctx, `UPDATE shadows.tasks SET state = 'running', worker = 'w', deliveries = 1, started_at = $2,
		lease_expires_at = now() + interval '1 hour' WHERE queue = $1 AND key = 'k'`, b.q.Name(), started)
	require.NoError(t, err)
	require.Empty(t, acquire("k", 2, 202, "full", 1))
	// Generation 1 finds "full" full: it is returned as parked (its worker
	// drops it), but generation 2's row stays running.
	require.Equal(t, []string{"k"}, acquire("k", 1, 201, "full", 1))
	var state string
	var waiting *string
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT state::text, waiting_on FROM shadows.tasks WHERE queue = $1 AND key = 'k'`,
		b.q.Name()).Scan(&state, &waiting))
	require.Equal(t, "running", state)
	require.Nil(t, waiting)
	require.Equal(t, 1, held("full"))
	// With room, generation 1 gets a slot of its own beside generation 2's.
	require.Empty(t, acquire("k", 1, 201, "roomy", 5))
	require.Empty(t, acquire("k", 2, 202, "roomy", 5))
	require.Equal(t, 2, held("roomy"))
}

// A run that outlives its task's record keeps its slot: here the old run
// of "k" ignores a cancel, the key's next copy parks behind it and is
// cancelled too, and its record is deleted. The sweep that frees slots of
// dead workers must not free the old run's, so "other" keeps waiting.
func TestRunOutlivingItsRecordKeepsItsSlot(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.cfg.Queue.ExecutionTTL = queue.NoExecutionTTL
	q, err := queue.New(b.pool, b.cfg.Queue)
	require.NoError(t, err)
	b.q = q
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	started := make(chan string, 10)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Backup]) error {
		started <- task.Key
		if task.Key == "k" {
			<-release // ignores the cancel
		}
		return nil
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "db", Max: 1}}})
	b.start(t)
	t.Cleanup(unblock)
	ctx := t.Context()
	waits := func(key string) {
		t.Helper()
		eventually(t, key+" parks", func() bool {
			ex, err := b.q.Execution(ctx, key)
			return err == nil && ex.WaitingOn != "" || len(started) > 0
		})
		require.Empty(t, started, "%s must wait for the old run of k", key)
	}

	_, err = b.q.Add(ctx, Backup{DB: "main"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	require.Equal(t, "k", <-started)
	require.NoError(t, b.q.Cancel(ctx, "k"))
	_, err = b.q.Add(ctx, Backup{DB: "main"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	waits("k")
	require.NoError(t, b.q.Cancel(ctx, "k"))
	_, err = b.pool.Exec(ctx, `DELETE FROM shadows.tasks WHERE queue = $1 AND key = 'k'`, b.q.Name())
	require.NoError(t, err)
	_, err = b.q.Add(ctx, Backup{DB: "main"}, &queue.AddOpts{Key: "other"})
	require.NoError(t, err)
	waits("other")
	var woken int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT shadows.wake_waiters($1)`, b.q.Name()).Scan(&woken))
	require.Zero(t, woken, "the sweep freed the old run's slot")

	unblock()
	require.Equal(t, "other", <-started, "the old run's slot freed when it returned")
}

// A replaced run that is still running keeps its slot until its handler
// returns: the copy that replaced it, and every other task on the key,
// wait for it, so the limit holds while both copies exist. The test reads
// the database's own answer (the new copy parked on the key) rather than
// timing anything.
func TestReplacedRunKeepsItsSlotUntilItReturns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	occ := newOccupancy()
	release := make(chan struct{})
	var started atomic.Int64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Backup]) error {
		occ.enter(task.Args.DB)
		defer occ.leave(task.Args.DB)
		occ.record(fmt.Sprintf("%s@%d", task.Key, started.Add(1)))
		if task.Key == "k" && task.Args.DB == "main" && started.Load() == 1 {
			<-release // the first copy ignores the replace until told
		}
		return nil
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "db", Max: 1}}})
	b.cfg.Concurrency = 10
	b.start(t)
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the worker stops, should the test fail early
	ctx := t.Context()

	_, err := b.q.Add(ctx, Backup{DB: "main"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	eventually(t, "the first copy runs", func() bool { return started.Load() == 1 })
	_, err = b.q.Replace(ctx, Backup{DB: "main"}, queue.AddOpts{Key: "k", When: time.Now()})
	require.NoError(t, err)
	_, err = b.q.Add(ctx, Backup{DB: "main"}, &queue.AddOpts{Key: "other"})
	require.NoError(t, err)
	for _, key := range []string{"k", "other"} {
		// Either it parks on the key, or (the bug) a second handler starts.
		eventually(t, key+" is claimed and decided", func() bool {
			ex, err := b.q.Execution(ctx, key)
			return err == nil && ex.WaitingOn != "" || started.Load() > 1
		})
		ex, err := b.q.Execution(ctx, key)
		require.NoError(t, err)
		require.Equal(t, "db:main", ex.WaitingOn, "%s must wait for the replaced copy's slot", key)
	}
	var running int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT running FROM shadows.concurrency WHERE queue = $1 AND limit_key = 'db:main'`,
		b.q.Name()).Scan(&running))
	require.Equal(t, 1, running, "the replaced copy's slot counts")

	unblock()
	for _, key := range []string{"k", "other"} {
		ex, err := b.wait(t, key)
		require.NoError(t, err)
		require.Equal(t, queue.StateCompleted, ex.State)
	}
	occ.mu.Lock()
	defer occ.mu.Unlock()
	require.Equal(t, 1, occ.peak["main"], "at most one backup of main at a time: %v", occ.order)
	require.Len(t, occ.order, 3)
}

// A slot's lease is renewed while its task runs: a task that runs for
// several redelivery timeouts keeps its slot, and the task waiting on the
// key starts only after it returned.
func TestLongRunKeepsItsSlot(t *testing.T) {
	t.Parallel()
	b := setup(t)
	occ := newOccupancy()
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Backup]) error {
		occ.enter(task.Args.DB)
		occ.record("start " + task.Key)
		if task.Key == "long" {
			time.Sleep(3 * time.Second)
		}
		occ.record("end " + task.Key)
		occ.leave(task.Args.DB)
		return nil
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "db", Max: 1}}})
	b.cfg.Concurrency = 4
	// Short enough for the run to outlast three leases, long enough that
	// the worker's own operations (bounded at half a lease) finish on a
	// loaded machine under -race.
	b.cfg.RedeliveryTimeout = time.Second
	ctx := t.Context()
	_, err := b.q.Add(ctx, Backup{DB: "main"}, &queue.AddOpts{Key: "long"})
	require.NoError(t, err)
	b.start(t)
	eventually(t, "the long run starts", func() bool {
		ex, err := b.q.Execution(ctx, "long")
		return err == nil && ex.State == queue.StateRunning
	})
	_, err = b.q.Add(ctx, Backup{DB: "main"}, &queue.AddOpts{Key: "next"})
	require.NoError(t, err)
	for _, key := range []string{"long", "next"} {
		ex, err := b.wait(t, key)
		require.NoError(t, err)
		require.Equal(t, queue.StateCompleted, ex.State)
		require.False(t, ex.Redelivered, key)
	}
	occ.mu.Lock()
	defer occ.mu.Unlock()
	require.Equal(t, []string{"start long", "end long", "start next", "end next"}, occ.order)
	require.Equal(t, 1, occ.peak["main"])
}

// A batch naming many limit keys at once takes a bounded number of locks:
// one lock per key used to exhaust the server's lock table ("out of shared
// memory") at around ten thousand keys with default settings.
func TestSlotWorkOnManyKeysAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	const n = 20000
	tasks, gens, runs, keys, maxes := make([]string, n), make([]int64, n), make([]int64, n), make([]string, n), make([]int32, n)
	started := make([]time.Time, n)
	for i := range n {
		tasks[i], gens[i], runs[i], keys[i], maxes[i] = fmt.Sprint("t", i), 1, int64(i+1), fmt.Sprint("k", i), 1
		started[i] = time.Now()
	}
	rows, err := b.pool.Query(ctx, `SELECT parked_key FROM shadows.acquire_slots($1, $2, $3, $4, $5, $6, $7, 60)`,
		b.q.Name(), tasks, gens, started, runs, keys, maxes)
	require.NoError(t, err)
	parked, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Empty(t, parked)
	var held int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM shadows.concurrency WHERE queue = $1`, b.q.Name()).Scan(&held))
	require.Equal(t, n, held)
	_, err = b.pool.Exec(ctx, `SELECT shadows.release_slots($1, $2, $3)`, b.q.Name(), keys, runs)
	require.NoError(t, err)
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM shadows.slots WHERE queue = $1`, b.q.Name()).Scan(&held))
	require.Zero(t, held)
}

// Edges of slot bookkeeping, staged against the SQL functions: a run
// cancelled between its claim and its admission is not parked (parked, it
// would be woken and run later); a blocked run parks only its own claim,
// never another run of the key and generation (claimed at another time);
// and the sweep deletes slots whose lease lapsed and leaves live ones.
func TestParkingOnlyTheAskingRunAndSweepingLapsedSlots(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	exec := func(sql string, args ...any) {
		t.Helper()
		_, err := b.pool.Exec(ctx, sql, args...)
		require.NoError(t, err)
	}
	started := time.Now().UTC().Truncate(time.Microsecond)
	acquire := func(key string, started time.Time) []string {
		t.Helper()
		rows, err := b.pool.Query(ctx, `SELECT parked_key FROM shadows.acquire_slots($1, $2, $3, $4, $5, $6, $7, 60)`,
			b.q.Name(), []string{key}, []int64{1}, []time.Time{started}, []int64{3}, []string{"full"}, []int32{1})
		require.NoError(t, err)
		parked, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		return parked
	}
	state := func(key string) (string, *string) {
		t.Helper()
		var state string
		var waiting *string
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT state::text, waiting_on FROM shadows.tasks WHERE queue = $1 AND key = $2`,
			b.q.Name(), key).Scan(&state, &waiting))
		return state, waiting
	}
	for _, key := range []string{"cancelled", "other-claim", "mine"} {
		_, err := b.q.Add(ctx, Backup{DB: "a"}, &queue.AddOpts{Key: key})
		require.NoError(t, err)
		exec(`UPDATE shadows.tasks SET state = 'running', worker = 'w', deliveries = 1, started_at = $3,
			cancel_requested = ($2 = 'cancelled'), lease_expires_at = now() + interval '1 hour'
			WHERE queue = $1 AND key = $2`, b.q.Name(), key, started)
	}
	exec(`INSERT INTO shadows.slots (queue, limit_key, run_id, task_key, generation, max_slots, lease_expires_at)
		VALUES ($1, 'full', 1, 'holder', 1, 1, now() + interval '1 hour'),
		       ($1, 'full', 2, 'gone', 1, 1, now() - interval '1 second')`, b.q.Name())

	require.Equal(t, []string{"cancelled"}, acquire("cancelled", started), "blocked: its worker drops it")
	st, waiting := state("cancelled")
	require.Equal(t, "running", st, "left to end cancelled when its lease lapses")
	require.Nil(t, waiting)

	require.Equal(t, []string{"other-claim"}, acquire("other-claim", started.Add(-time.Second)))
	st, waiting = state("other-claim")
	require.Equal(t, "running", st, "the row is another claim's: not parked")
	require.Nil(t, waiting)

	require.Equal(t, []string{"mine"}, acquire("mine", started))
	st, waiting = state("mine")
	require.Equal(t, "scheduled", st, "the asking run itself is parked")
	require.NotNil(t, waiting)
	require.Equal(t, "full", *waiting)

	_, err := b.pool.Exec(ctx, `SELECT shadows.wake_waiters($1)`, b.q.Name())
	require.NoError(t, err)
	rows, err := b.pool.Query(ctx, `SELECT run_id FROM shadows.slots WHERE queue = $1 ORDER BY 1`, b.q.Name())
	require.NoError(t, err)
	left, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Equal(t, []int64{1}, left)
}

// take_slots grants a batch outright only when every key has room for all
// of the batch's runs and nobody waits on it; otherwise acquire_slots
// decides, run by run: a key the batch itself would overfill admits the
// first run and parks the next, and a run asking for a key with waiters
// queues behind them even when a slot is free (the waiter is woken).
func TestTakeSlotsGrantsOnlyWhenEveryKeyHasRoom(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	started := time.Now().UTC().Truncate(time.Microsecond)
	for _, key := range []string{"a1", "a2", "a3", "a4", "b1", "b2"} {
		_, err := b.q.Add(ctx, Backup{DB: "a"}, &queue.AddOpts{Key: key})
		require.NoError(t, err)
		_, err = b.pool.Exec(ctx, `UPDATE shadows.tasks SET state = 'running', worker = 'w', deliveries = 1,
			started_at = $3, lease_expires_at = now() + interval '1 hour' WHERE queue = $1 AND key = $2`,
			b.q.Name(), key, started)
		require.NoError(t, err)
	}
	// take also reports whether take_slots handed the batch to
	// acquire_slots (counted by the server's per-transaction function
	// statistics), so the fast path cannot silently stop being taken.
	take := func(tasks []string, runs []int64, key string, max int32) (parked []string, fellBack bool) {
		t.Helper()
		n := len(tasks)
		gens, starts, keys, maxes := make([]int64, n), make([]time.Time, n), make([]string, n), make([]int32, n)
		for i := range n {
			gens[i], starts[i], keys[i], maxes[i] = 1, started, key, max
		}
		tx, err := b.pool.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(ctx)
		_, err = tx.Exec(ctx, `SET LOCAL track_functions = 'pl'`)
		require.NoError(t, err)
		rows, err := tx.Query(ctx, `SELECT parked_key FROM shadows.take_slots($1, $2, $3, $4, $5, $6, $7, 60)`,
			b.q.Name(), tasks, gens, starts, runs, keys, maxes)
		require.NoError(t, err)
		parked, err = pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		var calls int64
		require.NoError(t, tx.QueryRow(ctx, `SELECT coalesce(pg_stat_get_xact_function_calls(
			'shadows.acquire_slots(text, text[], bigint[], timestamptz[], bigint[], text[], integer[], float8)'::regprocedure), 0)`).Scan(&calls))
		require.NoError(t, tx.Commit(ctx))
		return parked, calls > 0
	}
	held := func(key string) int {
		t.Helper()
		var n int
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT coalesce(sum(running), 0) FROM shadows.concurrency
			WHERE queue = $1 AND limit_key = $2`, b.q.Name(), key).Scan(&n))
		return n
	}
	waitingOn := func(key string) *string {
		t.Helper()
		var w *string
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT waiting_on FROM shadows.tasks WHERE queue = $1 AND key = $2`,
			b.q.Name(), key).Scan(&w))
		return w
	}

	parked, fellBack := take([]string{"a1", "a2"}, []int64{1, 2}, "k", 2)
	require.Empty(t, parked, "room for both")
	require.False(t, fellBack, "an uncontended batch is decided by the fast path")
	require.Equal(t, 2, held("k"))
	parked, fellBack = take([]string{"a3"}, []int64{3}, "k", 2)
	require.Equal(t, []string{"a3"}, parked, "full")
	require.True(t, fellBack)
	require.Equal(t, "k", *waitingOn("a3"))

	_, err := b.pool.Exec(ctx, `SELECT shadows.release_slots($1, $2, $3)`, b.q.Name(), []string{"k"}, []int64{1})
	require.NoError(t, err)
	parked, fellBack = take([]string{"a4"}, []int64{4}, "k", 2)
	require.Equal(t, []string{"a4"}, parked, "a slot is free, but a3 waits for it")
	require.True(t, fellBack)
	require.Nil(t, waitingOn("a3"), "the waiter is woken to take the free slot")
	require.Equal(t, "k", *waitingOn("a4"))
	require.Equal(t, 1, held("k"))

	parked, fellBack = take([]string{"b1", "b2"}, []int64{5, 6}, "z", 1)
	require.Equal(t, []string{"b2"}, parked, "the batch alone overfills z")
	require.True(t, fellBack)
	require.Equal(t, 1, held("z"))
}

// failSlotInserts makes slot inserts of b's queue that match cond (SQL on
// NEW) fail with SQLSTATE code, the first n of them (all when n is 0), as
// a lost connection, a deadlock or a bad request would. It reports how
// many matching inserts were tried.
func failSlotInserts(t *testing.T, b *bundle, cond string, n int, code string) (tried func() int64) {
	t.Helper()
	ctx := t.Context()
	name := fmt.Sprintf("fail_slots_%x", rand.Uint64())
	queueLit := strings.ReplaceAll(b.q.Name(), "'", "''")
	limit := "true"
	if n > 0 {
		limit = fmt.Sprintf("n <= %d", n)
	}
	for _, stmt := range []string{
		`CREATE SEQUENCE public.` + name,
		`CREATE FUNCTION public.` + name + `() RETURNS trigger LANGUAGE plpgsql AS $$
		 DECLARE n bigint;
		 BEGIN
		     IF NEW.queue = '` + queueLit + `' AND (` + cond + `) THEN
		         n := nextval('public.` + name + `');
		         IF ` + limit + ` THEN
		             RAISE EXCEPTION 'injected: taking a slot fails' USING ERRCODE = '` + code + `';
		         END IF;
		     END IF;
		     RETURN NEW;
		 END $$`,
		`CREATE TRIGGER ` + name + ` BEFORE INSERT ON shadows.slots FOR EACH ROW EXECUTE FUNCTION public.` + name + `()`,
	} {
		_, err := b.pool.Exec(ctx, stmt)
		require.NoError(t, err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		_, _ = b.pool.Exec(ctx, `DROP TRIGGER IF EXISTS `+name+` ON shadows.slots`)
		_, _ = b.pool.Exec(ctx, `DROP FUNCTION IF EXISTS public.`+name+`()`)
		_, _ = b.pool.Exec(ctx, `DROP SEQUENCE IF EXISTS public.`+name)
	})
	return func() int64 {
		var last int64
		var called bool
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT last_value, is_called FROM public.`+name).Scan(&last, &called))
		if !called {
			return 0
		}
		return last
	}
}

type Plain struct {
	N int `json:"n"`
}

func (Plain) TaskName() string { return "plain" }

// When taking a batch's concurrency slots fails for a passing reason (here
// a serialisation failure), the worker starts the batch's other tasks and
// hands the limited ones back; they run soon after, as their first
// delivery, instead of sitting out a whole redelivery timeout (five minutes
// by default) under leases nobody renews.
func TestFailedSlotTakingHandsTheTaskBack(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tried := failSlotInserts(t, b, "true", 1, "40001")
	var runs atomic.Int32
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Backup]) error {
		runs.Add(1)
		return nil
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "db", Max: 1}}})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Plain]) error { return nil }, worker.Policy{})
	ctx := t.Context()
	_, err := b.q.Add(ctx, Backup{DB: "main"}, &queue.AddOpts{Key: "limited"})
	require.NoError(t, err)
	_, err = b.q.Add(ctx, Plain{N: 1}, &queue.AddOpts{Key: "plain"})
	require.NoError(t, err)
	b.start(t)

	for _, key := range []string{"limited", "plain"} {
		ex, err := b.wait(t, key)
		require.NoError(t, err)
		require.Equal(t, queue.StateCompleted, ex.State, key)
		require.False(t, ex.Redelivered, "%s: a hand-back is not a delivery", key)
	}
	require.Equal(t, int32(1), runs.Load())
	require.GreaterOrEqual(t, tried(), int64(2), "the first slot insert failed, a later one succeeded")
	require.Contains(t, b.logs.String(), "the tasks were handed back")
	var held int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM shadows.slots WHERE queue = $1`, b.q.Name()).Scan(&held))
	require.Zero(t, held)
}

// A task whose own slot request fails every time (an error that is not
// about the moment) fails with that error; it does not hold up the limited
// tasks claimed with it, nor come back again and again.
func TestSlotRequestThatAlwaysFailsFailsOnlyItsTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	failSlotInserts(t, b, "NEW.limit_key = 'db:poison'", 0, "22023")
	var runs atomic.Int32
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Backup]) error {
		runs.Add(1)
		return nil
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "db", Max: 1}}})
	ctx := t.Context()
	for _, db := range []string{"poison", "good", "other"} {
		_, err := b.q.Add(ctx, Backup{DB: db}, &queue.AddOpts{Key: db})
		require.NoError(t, err)
	}
	b.start(t)

	ex, err := b.wait(t, "poison")
	require.Error(t, err)
	require.Equal(t, queue.StateFailed, ex.State)
	require.Contains(t, ex.Error, "taking concurrency slots")
	require.Contains(t, ex.Error, "injected")
	for _, key := range []string{"good", "other"} {
		ex, err := b.wait(t, key)
		require.NoError(t, err)
		require.Equal(t, queue.StateCompleted, ex.State, key)
		require.False(t, ex.Redelivered, key)
	}
	require.Equal(t, int32(2), runs.Load(), "the poisoned task's handler never ran")
}

// A limit key too long for the slots table's index fails its task with an
// error saying so, before any slot is asked for.
func TestOverlongLimitKeyFailsTheTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Backup]) error { return nil },
		worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "db", Max: 1}}})
	ctx := t.Context()
	_, err := b.q.Add(ctx, Backup{DB: strings.Repeat("x", 8000)}, &queue.AddOpts{Key: "long"})
	require.NoError(t, err)
	b.start(t)
	ex, err := b.wait(t, "long")
	require.Error(t, err)
	require.Equal(t, queue.StateFailed, ex.State)
	require.Contains(t, ex.Error, "at most 2000 fit")
}

// Unclaim touches only the claimed run of this worker: a run asked to
// cancel since its claim ends cancelled, a run named with another claim
// time or worker is left alone, and the rest become due again with their
// delivery uncounted.
func TestUnclaimHandsBackOnlyTheClaimedRuns(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	for _, key := range []string{"back", "cancelled", "other-time", "other-worker"} {
		_, err := b.q.Add(ctx, Backup{DB: key}, &queue.AddOpts{Key: key})
		require.NoError(t, err)
	}
	q := db.New()
	claimed, err := q.ClaimDue(ctx, b.pool, db.ClaimDueParams{
		Queue: b.q.Name(), Worker: "w1", MaxRows: 10, LeaseSeconds: 60, TtlSeconds: 60,
	})
	require.NoError(t, err)
	require.Len(t, claimed, 4)
	require.NoError(t, b.q.Cancel(ctx, "cancelled"))
	p := db.UnclaimParams{Queue: b.q.Name(), Worker: "w1", TtlSeconds: 60}
	for _, r := range claimed {
		started := *r.StartedAt
		worker := "w1"
		switch r.Key {
		case "other-time":
			started = started.Add(time.Microsecond)
		case "other-worker":
			worker = "w2"
		}
		if worker != "w1" {
			continue // named by another worker's hand-back below
		}
		p.Keys = append(p.Keys, r.Key)
		p.Generations = append(p.Generations, r.Generation)
		p.StartedAts = append(p.StartedAts, started)
	}
	// A slot the failed request took after all, and another run's slot.
	_, err = b.pool.Exec(ctx, `INSERT INTO shadows.slots (queue, limit_key, run_id, task_key, generation, max_slots, lease_expires_at)
		VALUES ($1, 'db:back', 7, 'back', 1, 1, now() + interval '1 minute'),
		       ($1, 'db:back', 8, 'someone', 1, 1, now() + interval '1 minute')`, b.q.Name())
	require.NoError(t, err)
	p.LimitKeys, p.RunIds = []string{"db:back"}, []int64{7}
	_, err = q.Unclaim(ctx, b.pool, p)
	require.NoError(t, err)
	var runs []int64
	rows, err := b.pool.Query(ctx, `SELECT run_id FROM shadows.slots WHERE queue = $1`, b.q.Name())
	require.NoError(t, err)
	runs, err = pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Equal(t, []int64{8}, runs, "the handed-back run's slot is released, no other")
	for _, r := range claimed {
		if r.Key == "other-worker" {
			_, err := q.Unclaim(ctx, b.pool, db.UnclaimParams{Queue: b.q.Name(), Worker: "w2", TtlSeconds: 60,
				Keys: []string{r.Key}, Generations: []int64{r.Generation}, StartedAts: []time.Time{*r.StartedAt}})
			require.NoError(t, err) // w2 did not claim it: left running (below)
		}
	}
	want := map[string]struct {
		state      queue.State
		deliveries int
	}{
		"back":         {queue.StateScheduled, 0},
		"cancelled":    {queue.StateCancelled, 1},
		"other-time":   {queue.StateRunning, 1},
		"other-worker": {queue.StateRunning, 1},
	}
	for key, w := range want {
		var state string
		var deliveries int
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT state::text, deliveries FROM shadows.tasks WHERE queue = $1 AND key = $2`,
			b.q.Name(), key).Scan(&state, &deliveries))
		require.Equal(t, string(w.state), state, key)
		require.Equal(t, w.deliveries, deliveries, key)
	}
}

// A claim that fills every free slot but has some of its runs parked by a
// limit gives those slots back at once: the worker claims again instead of
// waiting, with free slots, for a running task to end (it once sat there
// while due tasks waited, for as long as its handlers ran).
func TestParkedRunsDoNotLeaveFreeSlotsIdle(t *testing.T) {
	t.Parallel()
	b := setup(t)
	release := make(chan struct{})
	defer close(release)
	started := make(chan string, 20)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Block]) error {
		started <- "block"
		<-release
		return nil
	}, worker.Policy{})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Backup]) error {
		started <- "backup"
		<-release
		return nil
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "db", Max: 1}}})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		started <- "echo"
		return nil
	}, worker.Policy{})
	b.cfg.Concurrency = 10
	ctx := t.Context()
	for range 8 {
		_, err := b.q.Add(ctx, Block{}, nil)
		require.NoError(t, err)
	}
	for range 2 { // the second waits for the first: its slot is free again
		_, err := b.q.Add(ctx, Backup{DB: "main"}, nil)
		require.NoError(t, err)
	}
	b.start(t)
	for range 9 {
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("the first nine tasks did not start")
		}
	}
	_, err := b.q.Add(ctx, Echo{Text: "quick"}, nil)
	require.NoError(t, err)
	select {
	case s := <-started:
		require.Equal(t, "echo", s)
	case <-time.After(5 * time.Second):
		t.Fatal("a due task waited while a slot was free")
	}
}

type Tenant struct {
	TenantID string `json:"tenant_id"`
}

// Shipment's limit arguments come from an embedded struct and from a field
// that omitempty leaves out of the stored JSON when empty.
type Shipment struct {
	Tenant
	Region string `json:"region,omitempty"`
	N      int    `json:"n"`
}

func (Shipment) TaskName() string { return "shipment" }

// Limit arguments are the arguments as encoding/json sees them: an embedded
// struct's fields are the task's own (registration refused them), and a
// field omitempty dropped counts as its zero value (such runs failed,
// "argument not found").
func TestLimitArgumentsFromEmbeddedAndOmittedFields(t *testing.T) {
	t.Parallel()
	b := setup(t)
	occ := newOccupancy()
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Shipment]) error {
		occ.enter("all")
		defer occ.leave("all")
		time.Sleep(20 * time.Millisecond)
		return nil
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Arg: "tenant_id", Max: 1}, {Arg: "region", Max: 1}}})
	b.cfg.Concurrency = 10
	ctx := t.Context()
	for i := range 6 {
		_, err := b.q.Add(ctx, Shipment{Tenant: Tenant{TenantID: fmt.Sprint("t", i%2)}, N: i}, nil)
		require.NoError(t, err)
	}
	b.runUntilFinished(t)
	var failed int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM shadows.tasks WHERE queue = $1 AND state <> 'completed'`,
		b.q.Name()).Scan(&failed))
	require.Zero(t, failed, "every run found its arguments")
	require.Equal(t, 1, occ.peak["all"], "the empty region is one key: one run at a time")
}
