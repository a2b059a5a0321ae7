package reliability_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/internal/reliability"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/strike"
)

// testStrikesAcrossProcesses: the test strikes tasks through one pool (the
// first producer) while a worker process is running one task and has others
// queued and scheduled:
//
//   - the running task of the struck customer is not interrupted;
//   - queued and scheduled tasks of the struck customer are cancelled by the
//     worker process when they come due, with the error "struck: <rule>",
//     and never run;
//   - tasks of a customer under a hold strike wait untouched (Held) and run
//     once the hold is restored — through the second producer;
//   - a second producer, with a pool of its own, sees the strikes at once:
//     its adds of the struck customer store nothing (DispositionStruck),
//     its adds under the hold are stored and held.
func testStrikesAcrossProcesses(t *testing.T, bin string) {
	ctx := testContext(t, time.Minute)
	pool := pgtest.Pool(t)
	createLedger(t, pool)
	name := pgtest.QueueName(t)
	q1 := newQueue(t, pool, name)
	// The second producer: its own pool, as another process would have.
	pool2, err := pgxpool.New(ctx, pgtest.URL(t))
	require.NoError(t, err)
	t.Cleanup(pool2.Close)
	q2 := newQueue(t, pool2, name)

	// One slot, so that what is added while the blocker runs stays queued.
	w := startWorker(t, bin, workerOpts{
		url: pgtest.URL(t), queue: name, name: "SW", concurrency: 1, redelivery: 5 * time.Second, logLevel: "info",
	})
	waitForWorkers(t, q1, 1, 30*time.Second)
	const blockFor = 2500 * time.Millisecond
	_, err = q1.Add(ctx, reliability.OrderJob{CustomerID: "bad", SleepMS: int(blockFor / time.Millisecond)},
		&queue.AddOpts{Key: "running-bad"})
	require.NoError(t, err)
	eventually(t, 30*time.Second, "the worker starts the blocker", func(ctx context.Context) (bool, string, error) {
		runs, err := queryLedger(ctx, pool, name)
		return len(runs) == 1, fmt.Sprintf("ledger: %v", runs), err
	}, w)

	// Queued: due now, behind the blocker. Scheduled: due after it ends.
	dueAt := time.Now().Add(blockFor + 1500*time.Millisecond)
	customers := []string{"bad", "good", "held"}
	keysOf := map[string][]string{}
	var entries []queue.Entry
	for _, c := range customers {
		for i := range 2 {
			for _, kind := range []string{"queued", "scheduled"} {
				key := fmt.Sprintf("%s-%s-%d", kind, c, i)
				e := queue.Entry{Key: key, Args: reliability.OrderJob{CustomerID: c, Amount: 100 * (i + 1)}}
				if kind == "scheduled" {
					e.When = dueAt
				}
				entries = append(entries, e)
				keysOf[c] = append(keysOf[c], key)
			}
		}
	}
	added, err := q1.AddMany(ctx, entries)
	require.NoError(t, err)
	for _, e := range added {
		require.Equal(t, queue.DispositionScheduled, e.Disposition, e.Key)
	}

	drop := strike.Rule{Task: reliability.OrderTaskName, Param: "customer_id", Op: strike.Eq, Value: "bad"}
	hold := strike.Rule{Task: reliability.OrderTaskName, Param: "customer_id", Op: strike.Eq, Value: "held", Hold: true}
	for _, r := range []strike.Rule{drop, hold} {
		isNew, err := q1.Strike(ctx, r)
		require.NoError(t, err)
		require.True(t, isNew, r.String())
	}
	struckAt := time.Now()
	t.Logf("struck %q and %q %v before the scheduled tasks are due", drop.String(), hold.String(), dueAt.Sub(struckAt).Round(time.Millisecond))

	// When the strikes committed, the blocker was running, the queued tasks
	// waited and the scheduled ones were not yet due.
	var all []string
	for _, c := range customers {
		all = append(all, keysOf[c]...)
	}
	for _, e := range executions(t, q1, append([]string{"running-bad"}, all...)) {
		switch {
		case e.Key == "running-bad":
			require.Equal(t, queue.StateRunning, e.State, "the blocker should still run when the strikes land")
		case strings.HasPrefix(e.Key, "queued-"):
			require.Equal(t, queue.StateQueued, e.State, "%s should still be waiting when the strikes land", e.Key)
		default:
			require.Equal(t, queue.StateScheduled, e.State, "%s should not be due yet when the strikes land", e.Key)
		}
		require.False(t, e.Held, e.Key)
	}

	// The second producer sees both strikes at once.
	infos, err := q2.Strikes(ctx)
	require.NoError(t, err)
	require.Len(t, infos, 2)
	require.Equal(t, drop.String(), infos[0].Text)
	require.Equal(t, hold.String(), infos[1].Text)
	ex, err := q2.Add(ctx, reliability.OrderJob{CustomerID: "bad"}, &queue.AddOpts{Key: "late-bad"})
	require.NoError(t, err)
	require.Equal(t, queue.DispositionStruck, ex.Disposition)
	require.Equal(t, drop.String(), ex.StruckBy)
	_, err = q2.Execution(ctx, "late-bad")
	require.ErrorIs(t, err, queue.ErrNotFound, "a struck add stores nothing")
	batch, err := q2.AddMany(ctx, []queue.Entry{
		{Key: "late-bad-many", Args: reliability.OrderJob{CustomerID: "bad"}},
		{Key: "late-good", Args: reliability.OrderJob{CustomerID: "good"}},
		{Key: "late-held", Args: reliability.OrderJob{CustomerID: "held"}},
	})
	require.NoError(t, err)
	require.Equal(t, queue.DispositionStruck, batch[0].Disposition)
	require.Equal(t, queue.DispositionScheduled, batch[1].Disposition)
	require.Equal(t, queue.DispositionScheduled, batch[2].Disposition, "a hold strike stores the task")
	_, err = q2.Execution(ctx, "late-bad-many")
	require.ErrorIs(t, err, queue.ErrNotFound)
	keysOf["good"] = append(keysOf["good"], "late-good")
	keysOf["held"] = append(keysOf["held"], "late-held")

	// The worker process ends the blocker normally, cancels the struck tasks
	// as they come due, runs the others and sets the held ones aside.
	eventually(t, 30*time.Second, "the worker judges every task", func(ctx context.Context) (bool, string, error) {
		var pending []string
		check := func(key string, ok func(*queue.Execution) bool) error {
			e, err := q1.Execution(ctx, key)
			if err != nil {
				return err
			}
			if !ok(e) {
				pending = append(pending, fmt.Sprintf("%s %s held=%v", key, e.State, e.Held))
			}
			return nil
		}
		var errs []error
		errs = append(errs, check("running-bad", func(e *queue.Execution) bool { return e.State == queue.StateCompleted }))
		for _, k := range keysOf["bad"] {
			errs = append(errs, check(k, func(e *queue.Execution) bool { return e.State == queue.StateCancelled }))
		}
		for _, k := range keysOf["good"] {
			errs = append(errs, check(k, func(e *queue.Execution) bool { return e.State == queue.StateCompleted }))
		}
		for _, k := range keysOf["held"] {
			errs = append(errs, check(k, func(e *queue.Execution) bool { return e.Held }))
		}
		return len(pending) == 0, fmt.Sprintf("pending: %v", pending), errors.Join(errs...)
	}, w)
	judgedAt := time.Now()

	for _, e := range executions(t, q1, keysOf["bad"]) {
		require.Equal(t, queue.StateCancelled, e.State, e.Key)
		require.Equal(t, "struck: "+drop.String(), e.Error, e.Key)
		require.False(t, e.FinishedAt.IsZero(), e.Key)
		if strings.HasPrefix(e.Key, "scheduled-") {
			require.False(t, e.FinishedAt.Before(e.When), "%s was cancelled at %v, before it was due at %v: strikes are judged when a task comes due",
				e.Key, e.FinishedAt, e.When)
		}
	}
	for _, e := range executions(t, q1, keysOf["held"]) {
		require.True(t, e.Held, e.Key)
		require.Equal(t, queue.StateQueued, e.State, "a held task waits, due and untouched: %s", e.Key)
		require.Equal(t, 1, e.Attempt, e.Key)
	}
	e, err := q1.Execution(ctx, "running-bad")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, e.State, "a running task is never interrupted by a strike")
	out := w.output()
	require.Contains(t, out, "task struck: cancelled", "the worker process logs the cancellations")
	require.Contains(t, out, "task held by a strike", "the worker process logs the holds")

	byKey := runsByKey(readLedger(t, pool, name))
	require.Len(t, byKey["running-bad"], 1)
	require.True(t, byKey["running-bad"][0].finished, "the blocker ran to its end")
	for _, k := range keysOf["bad"] {
		require.Empty(t, byKey[k], "struck task %s must never run", k)
	}
	for _, k := range keysOf["held"] {
		require.Empty(t, byKey[k], "held task %s must not run before the restore", k)
	}
	for _, k := range keysOf["good"] {
		require.Len(t, byKey[k], 1, k)
	}

	// The second producer restores the hold the first one made; the worker
	// runs the held tasks without being told.
	restoredAt := dbNow(t, pool)
	restoring := time.Now()
	removed, err := q2.Restore(ctx, hold)
	require.NoError(t, err)
	require.True(t, removed)
	eventually(t, 15*time.Second, "the worker runs the held tasks after the restore", func(ctx context.Context) (bool, string, error) {
		var pending []string
		for _, k := range keysOf["held"] {
			e, err := q1.Execution(ctx, k)
			if err != nil {
				return false, "", err
			}
			if e.State != queue.StateCompleted {
				pending = append(pending, fmt.Sprintf("%s %s held=%v", k, e.State, e.Held))
			}
		}
		return len(pending) == 0, fmt.Sprintf("pending: %v", pending), nil
	}, w)
	t.Logf("every task judged %v after the strikes (the scheduled ones were due %v after them); the held ones completed %v after the restore",
		judgedAt.Sub(struckAt).Round(time.Millisecond), dueAt.Sub(struckAt).Round(time.Millisecond), time.Since(restoring).Round(time.Millisecond))
	byKey = runsByKey(readLedger(t, pool, name))
	for _, k := range keysOf["held"] {
		require.Len(t, byKey[k], 1, "held task %s runs once", k)
		require.True(t, byKey[k][0].startedAt.After(restoredAt), "held task %s ran before the restore", k)
	}

	// Restoring the drop strike lets the customer's tasks in again.
	removed, err = q1.Restore(ctx, drop)
	require.NoError(t, err)
	require.True(t, removed)
	ex, err = q2.Add(ctx, reliability.OrderJob{CustomerID: "bad"}, &queue.AddOpts{Key: "late-bad"})
	require.NoError(t, err)
	require.Equal(t, queue.DispositionScheduled, ex.Disposition)
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	ex, err = q2.Wait(wctx, "late-bad")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
	infos, err = q1.Strikes(ctx)
	require.NoError(t, err)
	require.Empty(t, infos)

	stopAll(t, 15*time.Second, w)
}
