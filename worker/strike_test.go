package worker_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/strike"
	"github.com/shadows-go/shadows/worker"
)

type Charge struct {
	CustomerID string  `json:"customer_id"`
	Amount     float64 `json:"amount"`
}

func (Charge) TaskName() string { return "charge" }

func TestStrikeAtClaimTime(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var mu sync.Mutex
	ran := map[string]bool{}
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Charge]) error {
		mu.Lock()
		ran[task.Key] = true
		mu.Unlock()
		return nil
	}, worker.Policy{})
	ctx := t.Context()
	// Queued and scheduled before the strike.
	for _, k := range []string{"big-now", "small-now"} {
		amount := 10.0
		if k == "big-now" {
			amount = 5000
		}
		_, err := b.q.Add(ctx, Charge{CustomerID: "c", Amount: amount}, &queue.AddOpts{Key: k})
		require.NoError(t, err)
	}
	_, err := b.q.Add(ctx, Charge{CustomerID: "c", Amount: 9000}, &queue.AddOpts{Key: "big-later", When: time.Now().Add(200 * time.Millisecond)})
	require.NoError(t, err)
	rule := strike.Rule{Task: "charge", Param: "amount", Op: strike.Gt, Value: 1000}
	_, err = b.q.Strike(ctx, rule)
	require.NoError(t, err)
	b.runUntilFinished(t)

	require.Equal(t, map[string]bool{"small-now": true}, ran)
	for _, k := range []string{"big-now", "big-later"} {
		ex, err := b.q.Execution(ctx, k)
		require.NoError(t, err)
		require.Equal(t, queue.StateCancelled, ex.State, k)
		require.Equal(t, "struck: "+rule.String(), ex.Error)
	}
	require.Contains(t, b.logs.String(), "task struck: cancelled")
	require.Contains(t, b.logs.String(), `strike="charge amount > 1000"`)
}

func TestHoldStrikeKeepsTasksUntilRestored(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var runs atomic.Int64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Charge]) error {
		runs.Add(1)
		return nil
	}, worker.Policy{})
	ctx := t.Context()
	hold := strike.Rule{Param: "customer_id", Op: strike.Eq, Value: "frozen", Hold: true}
	_, err := b.q.Strike(ctx, hold)
	require.NoError(t, err)
	for _, k := range []string{"a", "b"} {
		ex, err := b.q.Add(ctx, Charge{CustomerID: "frozen"}, &queue.AddOpts{Key: k})
		require.NoError(t, err)
		require.Equal(t, queue.DispositionScheduled, ex.Disposition, "a hold stores the task")
	}
	_, err = b.q.Add(ctx, Charge{CustomerID: "free"}, &queue.AddOpts{Key: "free"})
	require.NoError(t, err)
	b.runUntilFinished(t) // held tasks do not keep it running
	require.EqualValues(t, 1, runs.Load())
	ex, err := b.q.Execution(ctx, "a")
	require.NoError(t, err)
	require.True(t, ex.Held)
	require.Equal(t, queue.StateQueued, ex.State)
	snap, err := b.q.Snapshot(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, snap.Total)

	b.start(t)
	removed, err := b.q.Restore(ctx, hold)
	require.NoError(t, err)
	require.True(t, removed)
	for _, k := range []string{"a", "b"} {
		ex, err := b.wait(t, k)
		require.NoError(t, err)
		require.Equal(t, queue.StateCompleted, ex.State)
		require.False(t, ex.Held)
	}
	require.EqualValues(t, 3, runs.Load())
}

func TestStrikeNeverInterruptsRunningTasks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	started, release := make(chan struct{}), make(chan struct{})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Charge]) error {
		close(started)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, worker.Policy{})
	b.start(t)
	_, err := b.q.Add(t.Context(), Charge{}, &queue.AddOpts{Key: "running"})
	require.NoError(t, err)
	<-started
	_, err = b.q.Strike(t.Context(), strike.Rule{Task: "charge"})
	require.NoError(t, err)
	close(release)
	ex, err := b.wait(t, "running")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
}

func TestStruckAutomaticTaskResumesAfterRestore(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var runs atomic.Int64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Tick]) error {
		runs.Add(1)
		return nil
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: 20 * time.Millisecond, Automatic: true}})
	b.cfg.ReseedInterval = 50 * time.Millisecond
	ctx := t.Context()
	rule := strike.Rule{Task: "tick"}
	_, err := b.q.Strike(ctx, rule)
	require.NoError(t, err)
	b.start(t)
	// Struck: the seed is refused, and nothing runs however often it reseeds.
	time.Sleep(300 * time.Millisecond)
	require.Zero(t, runs.Load())
	_, err = b.q.Execution(ctx, "tick")
	require.ErrorIs(t, err, queue.ErrNotFound)
	require.Contains(t, b.logs.String(), "task struck: not added")

	_, err = b.q.Restore(ctx, rule)
	require.NoError(t, err)
	eventually(t, "the automatic task runs again", func() bool { return runs.Load() >= 3 })

	// Striking it again stops the live chain at its next run.
	_, err = b.q.Strike(ctx, rule)
	require.NoError(t, err)
	eventually(t, "the chain is cancelled", func() bool {
		ex, err := b.q.Execution(ctx, "tick")
		return err == nil && ex.State == queue.StateCancelled
	})
	n := runs.Load()
	time.Sleep(200 * time.Millisecond)
	require.Equal(t, n, runs.Load(), "a struck automatic task stays stopped")
}

// A hold judged in a transaction that commits after the hold was restored
// (an AddTx left open across the Restore) does not keep the task held for
// good: the workers' sweep releases tasks held under changed strikes.
func TestHoldRestoredWhileAnAddWasOpenIsReleased(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var runs atomic.Int64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Charge]) error {
		runs.Add(1)
		return nil
	}, worker.Policy{})
	ctx := t.Context()
	hold := strike.Rule{Param: "customer_id", Op: strike.Eq, Value: "frozen", Hold: true}
	_, err := b.q.Strike(ctx, hold)
	require.NoError(t, err)
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // committed below
	_, err = b.q.AddTx(ctx, tx, Charge{CustomerID: "frozen"}, &queue.AddOpts{Key: "late"})
	require.NoError(t, err)
	removed, err := b.q.Restore(ctx, hold)
	require.NoError(t, err)
	require.True(t, removed)
	require.NoError(t, tx.Commit(ctx))
	ex, err := b.q.Execution(ctx, "late")
	require.NoError(t, err)
	require.True(t, ex.Held, "held under the strike its transaction saw")

	b.start(t)
	ex, err = b.wait(t, "late")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
	require.EqualValues(t, 1, runs.Load())
}

// A perpetual task's next arguments are judged by the strikes, as docket's
// replace judges them: a run whose new arguments a strike matches is not
// run.
func TestPerpetualNextArgumentsAreJudged(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var mu sync.Mutex
	var amounts []float64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Charge]) error {
		mu.Lock()
		amounts = append(amounts, task.Args.Amount)
		mu.Unlock()
		if err := task.Perpetual.Perpetuate(Charge{CustomerID: task.Args.CustomerID, Amount: task.Args.Amount * 500}); err != nil {
			return err
		}
		task.Perpetual.After(time.Millisecond)
		return nil
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: time.Millisecond}})
	ctx := t.Context()
	rule := strike.Rule{Task: "charge", Param: "amount", Op: strike.Gt, Value: 1000}
	_, err := b.q.Strike(ctx, rule)
	require.NoError(t, err)
	_, err = b.q.Add(ctx, Charge{CustomerID: "c", Amount: 10}, &queue.AddOpts{Key: "p"})
	require.NoError(t, err)
	b.runUntilFinished(t)
	require.Equal(t, []float64{10}, amounts, "the next run's amount, 5000, is struck")
	ex, err := b.q.Execution(ctx, "p")
	require.NoError(t, err)
	require.Equal(t, queue.StateCancelled, ex.State)
	require.Equal(t, "struck: "+rule.String(), ex.Error)
}

// A redelivery judges the task under the strikes added while it ran, as
// docket's worker drops a struck redelivered task: a matching strike
// cancels it, a matching hold sets it aside.
func TestRedeliveryJudgesStrikesAddedWhileItRan(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var runs atomic.Int64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Charge]) error {
		runs.Add(1)
		return nil
	}, worker.Policy{})
	ctx := t.Context()
	for _, k := range []string{"big", "frozen", "fine"} {
		c := Charge{CustomerID: k, Amount: 10}
		if k == "big" {
			c.Amount = 5000
		}
		_, err := b.q.Add(ctx, c, &queue.AddOpts{Key: k})
		require.NoError(t, err)
	}
	// Claimed by a worker that died: running, its lease lapsed.
	_, err := b.pool.Exec(ctx, `UPDATE shadows.tasks SET state = 'running', worker = 'dead', started_at = now(),
		deliveries = 1, lease_expires_at = now() - interval '1 second' WHERE queue = $1`, b.q.Name())
	require.NoError(t, err)
	rule := strike.Rule{Task: "charge", Param: "amount", Op: strike.Gt, Value: 1000}
	_, err = b.q.Strike(ctx, rule)
	require.NoError(t, err)
	hold := strike.Rule{Param: "customer_id", Op: strike.Eq, Value: "frozen", Hold: true}
	_, err = b.q.Strike(ctx, hold)
	require.NoError(t, err)

	b.runUntilFinished(t)
	require.EqualValues(t, 1, runs.Load(), "only the task no strike matches runs again")
	ex, err := b.q.Execution(ctx, "fine")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
	require.True(t, ex.Redelivered)
	ex, err = b.q.Execution(ctx, "big")
	require.NoError(t, err)
	require.Equal(t, queue.StateCancelled, ex.State)
	require.Equal(t, "struck: "+rule.String(), ex.Error)
	ex, err = b.q.Execution(ctx, "frozen")
	require.NoError(t, err)
	require.True(t, ex.Held)
	require.Equal(t, queue.StateQueued, ex.State)
}

// Claims that go on through a backlog past the last full claim take a
// plainer statement for tasks judged at add time under the queue's current
// strikes; tasks added before the strikes changed must still be judged,
// early or late in the backlog, and none may be passed over for later ones.
func TestStrikesAreJudgedAllThroughABacklog(t *testing.T) {
	t.Parallel()
	// CheckInterval sets how often the claims start again from the start
	// of the order instead of past the last full claim.
	for _, every := range []time.Duration{time.Minute, time.Millisecond} {
		t.Run(every.String(), func(t *testing.T) {
			t.Parallel()
			strikesJudgedThroughBacklog(t, every)
		})
	}
}

func strikesJudgedThroughBacklog(t *testing.T, checkInterval time.Duration) {
	b := setup(t)
	var mu sync.Mutex
	ran := map[string]int{}
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Charge]) error {
		mu.Lock()
		ran[task.Key]++
		mu.Unlock()
		return nil
	}, worker.Policy{})
	ctx := t.Context()
	// Two batches whose tasks alternate in claim order: "old-" ones added
	// before the strike (judged when claimed), "new-" ones after it
	// (judged when added). A third of each matches the strike.
	const n = 300
	base := time.Now().Add(-time.Hour)
	batch := func(prefix string, offset int) []queue.Entry {
		entries := make([]queue.Entry, n)
		for i := range entries {
			amount := 10.0
			if i%3 == 0 {
				amount = 5000
			}
			entries[i] = queue.Entry{Args: Charge{CustomerID: "c", Amount: amount}, Key: fmt.Sprintf("%s%03d", prefix, i),
				When: base.Add(time.Duration(2*i+offset) * time.Millisecond)}
		}
		return entries
	}
	_, err := b.q.AddMany(ctx, batch("old-", 0))
	require.NoError(t, err)
	_, err = b.q.Strike(ctx, strike.Rule{Task: "charge", Param: "amount", Op: strike.Gt, Value: 1000})
	require.NoError(t, err)
	added, err := b.q.AddMany(ctx, batch("new-", 1))
	require.NoError(t, err)
	b.cfg.Concurrency = 7 // many full claims, each past the one before
	b.cfg.CheckInterval = checkInterval
	b.runUntilFinished(t)

	for i := range n {
		old, late := fmt.Sprintf("old-%03d", i), fmt.Sprintf("new-%03d", i)
		if i%3 == 0 {
			require.Zero(t, ran[old], "%s was struck", old)
			ex, err := b.q.Execution(ctx, old)
			require.NoError(t, err)
			require.Equal(t, queue.StateCancelled, ex.State, old)
			require.Equal(t, queue.DispositionStruck, added[i].Disposition, late)
			require.Zero(t, ran[late], "%s was struck", late)
		} else {
			require.Equal(t, 1, ran[old], old)
			require.Equal(t, 1, ran[late], late)
		}
	}
}
