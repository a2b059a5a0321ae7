package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/strike"
)

type Greet struct {
	Name string `json:"name"`
}

func (Greet) TaskName() string { return "greet" }

// Unencodable has a field encoding/json refuses.
type Unencodable struct {
	Ch chan int `json:"ch"`
}

func (Unencodable) TaskName() string { return "unencodable" }

// NotAnObject encodes as a JSON array.
type NotAnObject []int

func (NotAnObject) TaskName() string { return "not_an_object" }

type Nameless struct{}

func (Nameless) TaskName() string { return "" }

type bundle struct {
	pool *pgxpool.Pool
	q    *queue.Queue
}

func setup(t *testing.T, cfg queue.Config) *bundle {
	t.Helper()
	pool := pgtest.Pool(t)
	if cfg.Name == "" {
		cfg.Name = pgtest.QueueName(t)
	}
	q, err := queue.New(pool, cfg)
	require.NoError(t, err)
	return &bundle{pool: pool, q: q}
}

func countRows(t *testing.T, pool *pgxpool.Pool, queueName string) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(t.Context(), `SELECT count(*) FROM shadows.tasks WHERE queue = $1`, queueName).Scan(&n))
	return n
}

func TestNewConfig(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)

	q, err := queue.New(pool, queue.Config{})
	require.NoError(t, err)
	cfg := q.Config()
	require.Equal(t, queue.DefaultName, cfg.Name)
	require.Equal(t, queue.DefaultExecutionTTL, cfg.ExecutionTTL)
	require.Equal(t, queue.DefaultHeartbeatInterval, cfg.HeartbeatInterval)
	require.Equal(t, queue.DefaultMissedHeartbeats, cfg.MissedHeartbeats)
	require.NotNil(t, cfg.Logger)

	bad := []queue.Config{
		{Name: strings.Repeat("x", queue.MaxNameLength+1)},
		{Name: "tab\there"},
		{Name: "bad\xffutf8"},
		{ExecutionTTL: -time.Second},
		{HeartbeatInterval: -time.Second},
		{MissedHeartbeats: -1},
	}
	for _, c := range bad {
		_, err := queue.New(pool, c)
		require.ErrorIs(t, err, queue.ErrInvalidConfig, "%+v", c)
	}
	_, err = queue.New(nil, queue.Config{})
	require.ErrorIs(t, err, queue.ErrInvalidConfig)

	q, err = queue.New(pool, queue.Config{ExecutionTTL: queue.NoExecutionTTL})
	require.NoError(t, err)
	require.Equal(t, queue.NoExecutionTTL, q.Config().ExecutionTTL)
}

func TestAddDispositionsAndStates(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()

	ex, err := b.q.Add(ctx, Greet{Name: "ada"}, nil)
	require.NoError(t, err)
	require.Equal(t, queue.DispositionScheduled, ex.Disposition)
	require.Equal(t, queue.StateQueued, ex.State)
	require.Equal(t, "greet", ex.Task)
	require.Len(t, ex.Key, 36, "a fresh key is a UUID")
	require.EqualValues(t, 1, ex.Generation)
	require.JSONEq(t, `{"name":"ada"}`, string(ex.Args))

	got, err := b.q.Execution(ctx, ex.Key)
	require.NoError(t, err)
	require.Equal(t, queue.StateQueued, got.State)
	require.Equal(t, queue.DispositionLoaded, got.Disposition)
	require.Equal(t, 1, got.Attempt)
	require.False(t, got.Redelivered)
	require.Empty(t, got.Worker)

	future := time.Now().Add(time.Hour)
	ex, err = b.q.Add(ctx, Greet{Name: "later"}, &queue.AddOpts{When: future, Key: "later"})
	require.NoError(t, err)
	require.Equal(t, queue.StateScheduled, ex.State)
	require.WithinDuration(t, future, ex.When, time.Millisecond)

	// A live key keeps its task: same time, same arguments.
	again, err := b.q.Add(ctx, Greet{Name: "other"}, &queue.AddOpts{Key: "later"})
	require.NoError(t, err)
	require.Equal(t, queue.DispositionAlreadyScheduled, again.Disposition)
	require.Equal(t, queue.StateScheduled, again.State)
	require.JSONEq(t, `{"name":"later"}`, string(again.Args))
	require.WithinDuration(t, future, again.When, time.Millisecond)
	require.Equal(t, 1, countRows(t, b.pool, b.q.Name())-1)
}

func TestReAddAfterTerminal(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()

	_, err := b.q.Add(ctx, Greet{Name: "one"}, &queue.AddOpts{Key: "k", When: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	require.NoError(t, b.q.Cancel(ctx, "k"))
	ex, err := b.q.Execution(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, queue.StateCancelled, ex.State)
	require.False(t, ex.FinishedAt.IsZero())

	ex, err = b.q.Add(ctx, Greet{Name: "two"}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	require.Equal(t, queue.DispositionScheduled, ex.Disposition)
	require.EqualValues(t, 2, ex.Generation)
	got, err := b.q.Execution(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, queue.StateQueued, got.State)
	require.JSONEq(t, `{"name":"two"}`, string(got.Args))
	require.True(t, got.FinishedAt.IsZero(), "the old record's fields are reset")
}

func TestReplace(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()

	_, err := b.q.Replace(ctx, Greet{}, queue.AddOpts{When: time.Now()})
	require.ErrorIs(t, err, queue.ErrInvalidKey)
	_, err = b.q.Replace(ctx, Greet{}, queue.AddOpts{Key: "k"})
	require.Error(t, err)
	require.Equal(t, 0, countRows(t, b.pool, b.q.Name()))

	// On an unknown key Replace adds.
	when := time.Now().Add(time.Hour)
	ex, err := b.q.Replace(ctx, Greet{Name: "v1"}, queue.AddOpts{Key: "k", When: when})
	require.NoError(t, err)
	require.Equal(t, queue.DispositionScheduled, ex.Disposition)
	require.EqualValues(t, 1, ex.Generation)

	// On a live key it overwrites arguments and time.
	ex, err = b.q.Replace(ctx, Greet{Name: "v2"}, queue.AddOpts{Key: "k", When: when.Add(time.Minute)})
	require.NoError(t, err)
	require.Equal(t, queue.DispositionScheduled, ex.Disposition)
	require.EqualValues(t, 2, ex.Generation)
	got, err := b.q.Execution(ctx, "k")
	require.NoError(t, err)
	require.JSONEq(t, `{"name":"v2"}`, string(got.Args))
	require.WithinDuration(t, when.Add(time.Minute), got.When, time.Millisecond)
	require.Equal(t, 1, countRows(t, b.pool, b.q.Name()))
}

func TestCancel(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()

	require.NoError(t, b.q.Cancel(ctx, "never-added"), "cancelling an unknown key is fine")
	_, err := b.q.Execution(ctx, "never-added")
	require.ErrorIs(t, err, queue.ErrNotFound)

	_, err = b.q.Add(ctx, Greet{}, &queue.AddOpts{Key: "due"})
	require.NoError(t, err)
	require.NoError(t, b.q.Cancel(ctx, "due"))
	first, err := b.q.Execution(ctx, "due")
	require.NoError(t, err)
	require.Equal(t, queue.StateCancelled, first.State)

	require.NoError(t, b.q.Cancel(ctx, "due"), "cancel is idempotent")
	second, err := b.q.Execution(ctx, "due")
	require.NoError(t, err)
	require.Equal(t, first.FinishedAt, second.FinishedAt, "a second cancel changes nothing")

	require.ErrorIs(t, b.q.Cancel(ctx, ""), queue.ErrInvalidKey)
}

func TestCancelWithoutRecords(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{ExecutionTTL: queue.NoExecutionTTL})
	ctx := t.Context()
	_, err := b.q.Add(ctx, Greet{}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	require.NoError(t, b.q.Cancel(ctx, "k"))
	_, err = b.q.Execution(ctx, "k")
	require.ErrorIs(t, err, queue.ErrNotFound)
}

func TestTransactionalAdd(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()

	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	_, err = b.q.AddTx(ctx, tx, Greet{}, &queue.AddOpts{Key: "rolled-back"})
	require.NoError(t, err)
	_, err = b.q.AddManyTx(ctx, tx, []queue.Entry{{Args: Greet{}, Key: "rolled-back-many"}})
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx))
	_, err = b.q.Execution(ctx, "rolled-back")
	require.ErrorIs(t, err, queue.ErrNotFound)
	_, err = b.q.Execution(ctx, "rolled-back-many")
	require.ErrorIs(t, err, queue.ErrNotFound)

	err = pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		if _, err := b.q.AddTx(ctx, tx, Greet{}, &queue.AddOpts{Key: "committed"}); err != nil {
			return err
		}
		if _, err := b.q.ReplaceTx(ctx, tx, Greet{Name: "r"}, queue.AddOpts{Key: "replaced", When: time.Now()}); err != nil {
			return err
		}
		return b.q.CancelTx(ctx, tx, "committed")
	})
	require.NoError(t, err)
	ex, err := b.q.Execution(ctx, "committed")
	require.NoError(t, err)
	require.Equal(t, queue.StateCancelled, ex.State)
	ex, err = b.q.Execution(ctx, "replaced")
	require.NoError(t, err)
	require.Equal(t, queue.StateQueued, ex.State)
}

func TestAddMany(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()

	_, err := b.q.Add(ctx, Greet{Name: "existing"}, &queue.AddOpts{Key: "live"})
	require.NoError(t, err)
	when := time.Now().Add(time.Hour)
	entries := []queue.Entry{
		{Args: Greet{Name: "a"}, Key: "a"},
		{Args: Greet{Name: "b"}, Key: "b", When: when},
		{Args: Greet{Name: "dup"}, Key: "a"},
		{Args: Greet{Name: "live"}, Key: "live"},
		{Args: Greet{Name: "fresh"}},
	}
	out, err := b.q.AddMany(ctx, entries)
	require.NoError(t, err)
	require.Len(t, out, len(entries))
	want := []queue.Disposition{
		queue.DispositionScheduled, queue.DispositionScheduled, queue.DispositionAlreadyScheduled,
		queue.DispositionAlreadyScheduled, queue.DispositionScheduled,
	}
	for i, ex := range out {
		require.Equal(t, want[i], ex.Disposition, "entry %d", i)
	}
	require.Equal(t, queue.StateQueued, out[0].State)
	require.Equal(t, queue.StateScheduled, out[1].State)
	require.NotEmpty(t, out[4].Key)
	require.Equal(t, 4, countRows(t, b.pool, b.q.Name()))
	got, err := b.q.Execution(ctx, "a")
	require.NoError(t, err)
	require.JSONEq(t, `{"name":"a"}`, string(got.Args), "the first entry of a key wins")
	// As Add does, an entry that is already scheduled describes the task
	// its key holds, not itself.
	require.JSONEq(t, `{"name":"a"}`, string(out[2].Args))
	require.Equal(t, out[0].Generation, out[2].Generation)
	require.JSONEq(t, `{"name":"existing"}`, string(out[3].Args))
	require.Equal(t, queue.StateQueued, out[3].State)
	require.EqualValues(t, 1, out[3].Generation)

	// More than one statement's worth, in order.
	many := make([]queue.Entry, 12_000)
	for i := range many {
		many[i] = queue.Entry{Args: Greet{Name: "x"}}
	}
	out, err = b.q.AddMany(ctx, many)
	require.NoError(t, err)
	require.Len(t, out, len(many))
	for _, ex := range out {
		require.Equal(t, queue.DispositionScheduled, ex.Disposition)
	}
	require.Equal(t, 4+len(many), countRows(t, b.pool, b.q.Name()))
}

// A batch of generated keys is copied in (no live key can match a new
// one), unless the queue has strikes: then every entry is judged first.
func TestAddManyGeneratedKeys(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()

	when := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	out, err := b.q.AddMany(ctx, []queue.Entry{{Args: Greet{Name: "now"}}, {Args: Greet{Name: "later"}, When: when}})
	require.NoError(t, err)
	require.Equal(t, queue.DispositionScheduled, out[0].Disposition)
	require.Equal(t, queue.StateQueued, out[0].State)
	require.Equal(t, int64(1), out[0].Generation)
	require.Equal(t, queue.StateScheduled, out[1].State)
	require.True(t, when.Equal(out[1].When), "when %v, stored %v", when, out[1].When)
	for _, ex := range out {
		got, err := b.q.Execution(ctx, ex.Key)
		require.NoError(t, err)
		require.Equal(t, ex.State, got.State)
		require.True(t, ex.When.Equal(got.When), "returned %v, stored %v", ex.When, got.When)
		require.True(t, ex.CreatedAt.Equal(got.CreatedAt))
		require.JSONEq(t, string(ex.Args), string(got.Args))
	}

	_, err = b.q.Strike(ctx, strike.Rule{Task: Greet{}.TaskName(), Param: "name", Op: strike.Eq, Value: "bad"})
	require.NoError(t, err)
	out, err = b.q.AddMany(ctx, []queue.Entry{{Args: Greet{Name: "bad"}}, {Args: Greet{Name: "good"}}})
	require.NoError(t, err)
	require.Equal(t, queue.DispositionStruck, out[0].Disposition)
	require.Equal(t, queue.DispositionScheduled, out[1].Disposition)
	require.Equal(t, 3, countRows(t, b.pool, b.q.Name()))
}

// A batch streamed in with COPY after a strike came and went records the
// queue's strike epoch, so workers start its tasks without judging them
// again, and leaves out nothing: every column reads as an INSERT stores it.
func TestAddManyCopyAfterAStrikeWasRestored(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()
	rule := strike.Rule{Task: Greet{}.TaskName(), Param: "name", Op: strike.Eq, Value: "bad"}
	_, err := b.q.Strike(ctx, rule)
	require.NoError(t, err)
	_, err = b.q.Restore(ctx, rule)
	require.NoError(t, err)
	out, err := b.q.AddMany(ctx, []queue.Entry{{Args: Greet{Name: "bad"}}, {Args: Greet{Name: "x"}}})
	require.NoError(t, err)
	var stale int
	require.NoError(t, b.pool.QueryRow(ctx, `
		SELECT count(*) FROM shadows.tasks t
		WHERE t.queue = $1 AND (t.strike_epoch <> (SELECT epoch FROM shadows.strike_epochs e WHERE e.queue = $1)
		   OR t.run_at <> t.created_at OR t.state <> 'scheduled' OR t.generation <> 1 OR t.trace_context IS NOT NULL)`,
		b.q.Name()).Scan(&stale))
	require.Zero(t, stale, "rows stored under another strike epoch, or not as an INSERT stores them")
	for _, ex := range out {
		require.Equal(t, queue.DispositionScheduled, ex.Disposition)
		require.Equal(t, queue.StateQueued, ex.State)
	}
}

// Entries sharing a key behave as one Add after another: when a strike
// keeps out the first, the next one is added.
func TestAddManyRepeatedKeyAfterAStruckEntry(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()
	_, err := b.q.Strike(ctx, strike.Rule{Task: Greet{}.TaskName(), Param: "name", Op: strike.Eq, Value: "bad"})
	require.NoError(t, err)
	out, err := b.q.AddMany(ctx, []queue.Entry{
		{Args: Greet{Name: "bad"}, Key: "k"},
		{Args: Greet{Name: "bad"}, Key: "k"},
		{Args: Greet{Name: "good"}, Key: "k"},
		{Args: Greet{Name: "late"}, Key: "k"},
		{Args: Greet{Name: "other"}, Key: "o"},
	})
	require.NoError(t, err)
	want := []queue.Disposition{queue.DispositionStruck, queue.DispositionStruck, queue.DispositionScheduled,
		queue.DispositionAlreadyScheduled, queue.DispositionScheduled}
	for i, ex := range out {
		require.Equal(t, want[i], ex.Disposition, "entry %d", i)
	}
	got, err := b.q.Execution(ctx, "k")
	require.NoError(t, err)
	require.JSONEq(t, `{"name":"good"}`, string(got.Args))
	require.JSONEq(t, `{"name":"good"}`, string(out[3].Args), "the late entry describes the stored task")
	require.Equal(t, 2, countRows(t, b.pool, b.q.Name()))
}

func TestBadInputStoresNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()

	_, err := b.q.Add(ctx, Unencodable{Ch: make(chan int)}, nil)
	require.ErrorIs(t, err, queue.ErrInvalidArgs)
	_, err = b.q.Add(ctx, NotAnObject{1, 2}, nil)
	require.ErrorIs(t, err, queue.ErrInvalidArgs)
	_, err = b.q.Add(ctx, Nameless{}, nil)
	require.ErrorIs(t, err, queue.ErrInvalidArgs)
	_, err = b.q.Add(ctx, nil, nil)
	require.ErrorIs(t, err, queue.ErrInvalidArgs)
	_, err = b.q.Add(ctx, Greet{}, &queue.AddOpts{Key: strings.Repeat("k", queue.MaxKeyLength+1)})
	require.ErrorIs(t, err, queue.ErrInvalidKey)
	_, err = b.q.Add(ctx, Greet{}, &queue.AddOpts{Key: "nul\x00key"})
	require.ErrorIs(t, err, queue.ErrInvalidKey)
	// encoding/json writes a NUL as \u0000, which jsonb refuses.
	_, err = b.q.Add(ctx, Greet{Name: "nul\x00name"}, nil)
	require.ErrorIs(t, err, queue.ErrInvalidArgs)
	require.ErrorContains(t, err, `\u0000`)
	_, err = b.q.Add(ctx, Greet{Name: `a backslash, then u0000: \u0000`}, nil)
	require.NoError(t, err, "a literal backslash is no escape")

	// One bad entry fails the whole batch before anything is stored.
	_, err = b.q.AddMany(ctx, []queue.Entry{{Args: Greet{}}, {Args: Unencodable{}}})
	require.ErrorIs(t, err, queue.ErrInvalidArgs)
	require.Equal(t, 1, countRows(t, b.pool, b.q.Name()), "only the task with the literal backslash")
}

func TestNamesAndKeysAreData(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := t.Context()
	name := pgtest.QueueName(t) + `'; DROP TABLE shadows.tasks; --`
	q, err := queue.New(pool, queue.Config{Name: name})
	require.NoError(t, err)
	keys := []string{`'; DELETE FROM shadows.tasks; --`, `"quoted"`, `a;b`, `$1`, `\x`, `ключ`}
	for _, k := range keys {
		ex, err := q.Add(ctx, Greet{Name: k}, &queue.AddOpts{Key: k})
		require.NoError(t, err)
		require.Equal(t, queue.DispositionScheduled, ex.Disposition)
	}
	for _, k := range keys {
		ex, err := q.Execution(ctx, k)
		require.NoError(t, err)
		require.Equal(t, k, ex.Key)
		var args Greet
		require.NoError(t, json.Unmarshal(ex.Args, &args))
		require.Equal(t, k, args.Name)
		require.NoError(t, q.Cancel(ctx, k))
	}
	require.Equal(t, len(keys), countRows(t, pool, name))
}

func TestQueuesAreIsolated(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := t.Context()
	a, err := queue.New(pool, queue.Config{Name: pgtest.QueueName(t)})
	require.NoError(t, err)
	b, err := queue.New(pool, queue.Config{Name: pgtest.QueueName(t)})
	require.NoError(t, err)

	_, err = a.Add(ctx, Greet{Name: "a"}, &queue.AddOpts{Key: "same"})
	require.NoError(t, err)
	ex, err := b.Add(ctx, Greet{Name: "b"}, &queue.AddOpts{Key: "same"})
	require.NoError(t, err)
	require.Equal(t, queue.DispositionScheduled, ex.Disposition, "the same key in another queue is another task")

	require.NoError(t, b.Cancel(ctx, "same"))
	got, err := a.Execution(ctx, "same")
	require.NoError(t, err)
	require.Equal(t, queue.StateQueued, got.State, "cancelling in one queue leaves the other alone")

	n, err := b.Clear(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
	snap, err := a.Snapshot(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, snap.Total)
}

func TestSnapshotAndClear(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()

	for range 3 {
		_, err := b.q.Add(ctx, Greet{}, nil)
		require.NoError(t, err)
	}
	for range 2 {
		_, err := b.q.Add(ctx, Greet{}, &queue.AddOpts{When: time.Now().Add(time.Hour)})
		require.NoError(t, err)
	}
	snap, err := b.q.Snapshot(ctx)
	require.NoError(t, err)
	require.Equal(t, 5, snap.Total)
	require.Equal(t, 3, snap.Queued)
	require.Equal(t, 5, snap.FutureCount)
	require.Len(t, snap.Future, 5)
	require.Zero(t, snap.RunningCount)
	require.Empty(t, snap.Running)
	require.False(t, snap.Taken.IsZero())
	for i := 1; i < len(snap.Future); i++ {
		require.False(t, snap.Future[i].When.Before(snap.Future[i-1].When), "earliest first")
	}

	n, err := b.q.Clear(ctx)
	require.NoError(t, err)
	require.Equal(t, 5, n)
	snap, err = b.q.Snapshot(ctx)
	require.NoError(t, err)
	require.Zero(t, snap.Total)
	ex, err := b.q.Execution(ctx, anyKey(t, b))
	require.NoError(t, err)
	require.Equal(t, queue.StateCancelled, ex.State, "cleared tasks keep a cancelled record")
}

func anyKey(t *testing.T, b *bundle) string {
	t.Helper()
	var key string
	require.NoError(t, b.pool.QueryRow(t.Context(), `SELECT key FROM shadows.tasks WHERE queue = $1 LIMIT 1`, b.q.Name()).Scan(&key))
	return key
}

func TestWaitTimesOut(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	_, err := b.q.Add(ctx, Greet{}, &queue.AddOpts{Key: "never-run"})
	require.NoError(t, err)
	_, err = b.q.Wait(ctx, "never-run")
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestWaitReportsOutcome(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := t.Context()
	_, err := b.q.Add(ctx, Greet{}, &queue.AddOpts{Key: "c"})
	require.NoError(t, err)

	done := make(chan error, 1)
	go func() {
		_, err := b.q.Wait(ctx, "c")
		done <- err
	}()
	require.NoError(t, b.q.Cancel(ctx, "c"))
	select {
	case err := <-done:
		require.ErrorIs(t, err, queue.ErrCancelled)
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after the task was cancelled")
	}
}

func TestUnreachableDatabase(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	cfg, err := pgxpool.ParseConfig("postgres://postgres@127.0.0.1:1/none?connect_timeout=1")
	require.NoError(t, err)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer pool.Close()
	q, err := queue.New(pool, queue.Config{})
	require.NoError(t, err)
	_, err = q.Add(ctx, Greet{}, nil)
	require.Error(t, err)
	require.False(t, errors.Is(err, queue.ErrInvalidArgs))
	_, err = q.AddMany(ctx, []queue.Entry{{Args: Greet{}}})
	require.Error(t, err)
}

// addBetween runs add just before the statement whose sqlc name is stmt.
type addBetween struct {
	stmt string
	add  func(context.Context)
	done atomic.Bool
}

func (a *addBetween) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if strings.Contains(data.SQL, "-- name: "+a.stmt+" ") && a.done.CompareAndSwap(false, true) {
		a.add(ctx)
	}
	return ctx
}

func (*addBetween) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// Without records, Cancel deletes the record it cancelled in a second
// statement; a task added again under the key in between stays (it was
// deleted, though its Add had reported it scheduled).
func TestCancelWithoutRecordsKeepsATaskAddedMeanwhile(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	name := pgtest.QueueName(t)
	plain, err := queue.New(pgtest.Pool(t), queue.Config{Name: name, ExecutionTTL: queue.NoExecutionTTL})
	require.NoError(t, err)
	var added *queue.Execution
	hook := &addBetween{stmt: "DeleteTask", add: func(ctx context.Context) {
		added, err = plain.Add(ctx, Greet{Name: "again"}, &queue.AddOpts{Key: "k"})
	}}
	cfg, err := pgxpool.ParseConfig(pgtest.URL(t))
	require.NoError(t, err)
	cfg.ConnConfig.Tracer = hook
	traced, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(traced.Close)
	q, err := queue.New(traced, queue.Config{Name: name, ExecutionTTL: queue.NoExecutionTTL})
	require.NoError(t, err)

	_, err = q.Add(ctx, Greet{Name: "first"}, &queue.AddOpts{Key: "k", When: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	require.NoError(t, q.Cancel(ctx, "k"))
	require.True(t, hook.done.Load(), "the add ran between the cancel's statements")
	require.NoError(t, err)
	require.Equal(t, queue.DispositionScheduled, added.Disposition)
	got, err := q.Execution(ctx, "k")
	require.NoError(t, err, "the task added meanwhile is still there")
	require.JSONEq(t, `{"name":"again"}`, string(got.Args))
}
