package reliability_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/internal/reliability"
	"github.com/shadows-go/shadows/queue"
)

// testConcurrencyLimits: four worker processes of concurrency 20 run 2,000
// tasks of 20 customers in 4 regions, limited to one run at a time per
// customer and three per region. Every handler records its start and end
// in the ledger, on the database server's clock; a sweep over those
// intervals proves that neither limit was ever exceeded, while runs of
// different customers did overlap. Every task ran exactly once.
//
// The ledger interval of a run lies inside the time its slots are held: the
// slots are taken before the handler is called, and released only after the
// run's outcome is recorded, which is after the handler wrote its end.
func testConcurrencyLimits(t *testing.T, bin string) {
	const (
		tasks       = 2000
		customers   = 20
		regions     = 4
		processes   = 4
		concurrency = 20
		// At most 12 runs are open at once (3 per region), so the tasks
		// take at least 2000/12 × sleepMS; the rest is the claim, park,
		// wake and finish round trips of each run.
		sleepMS = 20
	)
	ctx := testContext(t, 2*time.Minute)
	pool := pgtest.Pool(t)
	createLedger(t, pool)
	name := pgtest.QueueName(t)
	q := newQueue(t, pool, name)

	var procs []*proc
	for i := range processes {
		procs = append(procs, startWorker(t, bin, workerOpts{
			url: pgtest.URL(t), queue: name, name: fmt.Sprintf("L%d", i+1),
			concurrency: concurrency, redelivery: 5 * time.Second,
			// At most 12 handlers run at once across the four processes;
			// keep each pool small so that parallel tests do not exhaust
			// the server's connections (each process also holds one for
			// its listener).
			maxConns: 6,
		}))
	}
	waitForWorkers(t, q, processes, 30*time.Second)

	entries := make([]queue.Entry, tasks)
	keys := make([]string, tasks)
	for i := range entries {
		keys[i] = fmt.Sprintf("lim-%04d", i)
		// Every customer has tasks in every region, interleaved.
		entries[i] = queue.Entry{Key: keys[i], Args: reliability.LimitedJob{
			CustomerID: fmt.Sprintf("c%02d", i%customers),
			Region:     fmt.Sprintf("r%d", (i/customers+i)%regions),
			SleepMS:    sleepMS,
		}}
	}
	began := time.Now()
	added, err := q.AddMany(ctx, entries)
	require.NoError(t, err)
	for _, e := range added {
		require.Equal(t, queue.DispositionScheduled, e.Disposition, e.Key)
	}

	waitCompleted(t, pool, name, tasks, 100*time.Second, procs...)
	took := time.Since(began)
	t.Logf("%d limited tasks completed by %d processes in %v", tasks, processes, took.Round(time.Millisecond))
	stopAll(t, 30*time.Second, procs...)

	runs := readLedger(t, pool, name)
	byKey := runsByKey(runs)
	require.Len(t, byKey, tasks, "distinct keys in the ledger: every task must have run")
	if dups := duplicates(byKey); len(dups) > 0 {
		t.Fatalf("%d tasks ran more than once (%d runs for %d tasks), the first ones:\n%s",
			len(dups), len(runs), tasks, describeRuns(t, pool, name, dups, byKey))
	}
	perWorker := map[string]int{}
	for i, k := range keys {
		r := byKey[k][0]
		require.True(t, r.finished, "run of %s on %s never finished", k, r.worker)
		require.False(t, r.redelivered, "run of %s was a redelivery", k)
		want := entries[i].Args.(reliability.LimitedJob)
		require.Equal(t, want.CustomerID, r.customer, k)
		require.Equal(t, want.Region, r.region, k)
		perWorker[r.worker]++
	}

	byCustomer := sweep(runs, func(r ledgerRun) string { return r.customer })
	byRegion := sweep(runs, func(r ledgerRun) string { return r.region })
	for c, n := range byCustomer.peak {
		require.LessOrEqual(t, n, reliability.MaxPerCustomer, "customer %s had %d runs at once at %v: %s",
			c, n, byCustomer.peakAt[c], overlapsOf(runs, func(r ledgerRun) string { return r.customer }, c, byCustomer.peakAt[c]))
	}
	for g, n := range byRegion.peak {
		require.LessOrEqual(t, n, reliability.MaxPerRegion, "region %s had %d runs at once at %v: %s",
			g, n, byRegion.peakAt[g], overlapsOf(runs, func(r ledgerRun) string { return r.region }, g, byRegion.peakAt[g]))
	}
	require.Len(t, byCustomer.peak, customers)
	require.Len(t, byRegion.peak, regions)
	// The limits, not a lack of work, kept the runs apart: runs of
	// different customers overlapped, and regions filled up.
	require.Greater(t, byCustomer.distinctPeak, 1, "runs of different customers never overlapped")
	require.Positive(t, byCustomer.crossPairs, "no two runs of different customers overlapped")
	regionPeaks := slices.Sorted(maps.Values(byRegion.peak))
	require.Equal(t, reliability.MaxPerRegion, regionPeaks[len(regionPeaks)-1], "no region ever reached its limit: %v", byRegion.peak)
	t.Logf("sweep: peak runs per customer %v; per region %v; at most %d runs and %d customers at once; %d overlapping pairs of runs of different customers",
		slices.Sorted(maps.Values(byCustomer.peak)), byRegion.peak, byCustomer.allPeak, byCustomer.distinctPeak, byCustomer.crossPairs)
	// The customer limit was binding, not trivially met: count the runs
	// that started within 50ms of the end of their customer's previous run
	// (a slot handed straight on to a waiter).
	tight := 0
	lastEnd := map[string]time.Time{}
	for _, r := range slices.SortedFunc(slices.Values(runs), func(a, b ledgerRun) int { return a.startedAt.Compare(b.startedAt) }) {
		if end, ok := lastEnd[r.customer]; ok && r.startedAt.Sub(end) < 50*time.Millisecond {
			tight++
		}
		lastEnd[r.customer] = r.finishedAt
	}
	t.Logf("%d of %d runs started within 50ms of the end of their customer's previous run", tight, len(runs))
	// How busy the limits let the fleet be: the mean number of runs open
	// at once, against the 12 that the region limits allow.
	var busy time.Duration
	first, last := runs[0].startedAt, runs[0].finishedAt
	for _, r := range runs {
		busy += r.finishedAt.Sub(r.startedAt)
		if r.startedAt.Before(first) {
			first = r.startedAt
		}
		if r.finishedAt.After(last) {
			last = r.finishedAt
		}
	}
	t.Logf("runs took %v on average (handler sleep %dms); %.1f runs open on average over %v, of at most %d",
		(busy / time.Duration(len(runs))).Round(10*time.Microsecond), sleepMS,
		float64(busy)/float64(last.Sub(first)), last.Sub(first).Round(time.Millisecond), regions*reliability.MaxPerRegion)
	t.Logf("tasks per process: %v", perWorker)
	for _, p := range procs {
		require.Positive(t, perWorker[p.name], "process %s ran no task (share: %v)", p.name, perWorker)
	}

	for _, e := range executions(t, q, keys) {
		require.Equal(t, queue.StateCompleted, e.State, e.Key)
		require.Equal(t, 1, e.Attempt, "waiting for a slot must cost no attempt: %s", e.Key)
		require.False(t, e.Redelivered, e.Key)
		require.Empty(t, e.WaitingOn, e.Key)
	}
	var slots int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM shadows.slots WHERE queue = $1`, name).Scan(&slots))
	require.Zero(t, slots, "every slot was released")
}

// testSlotFreedAfterKill: worker A holds the only slot of customer acme
// with a task that hangs; a second task of acme waits for the slot. A is
// killed with SIGKILL. Worker B, running all along, must run both tasks —
// the hung one redelivered once A's lease lapses, the waiter once the slot
// is free — with no new task added, within the redelivery timeout and a few
// seconds. Neither may start while A's leases are live: the holder runs
// again only once A's lease on the task lapses, and the waiter starts only
// once A's lease on the slot does. The two leases are renewed one statement
// after the other, so a kill that lands between them leaves the slot's
// lease up to one renewal interval older than the task's.
func testSlotFreedAfterKill(t *testing.T, bin string) {
	const redelivery = 2 * time.Second
	ctx := testContext(t, time.Minute)
	pool := pgtest.Pool(t)
	createLedger(t, pool)
	name := pgtest.QueueName(t)
	q := newQueue(t, pool, name)

	a := startWorker(t, bin, workerOpts{
		url: pgtest.URL(t), queue: name, name: "SA", concurrency: 2, redelivery: redelivery,
		mode: "hang", logLevel: "info",
	})
	// The regions differ, so only the customer limit is at stake.
	_, err := q.Add(ctx, reliability.LimitedJob{CustomerID: "acme", Region: "north", SleepMS: 200}, &queue.AddOpts{Key: "holder"})
	require.NoError(t, err)
	eventually(t, 30*time.Second, "A starts the holder", func(ctx context.Context) (bool, string, error) {
		runs, err := queryLedger(ctx, pool, name)
		return len(runs) == 1 && runs[0].worker == "SA", fmt.Sprintf("ledger: %v", runs), err
	}, a)

	b := startWorker(t, bin, workerOpts{
		url: pgtest.URL(t), queue: name, name: "SB", concurrency: 2, redelivery: redelivery, logLevel: "debug",
	})
	waitForWorkers(t, q, 2, 30*time.Second)
	_, err = q.Add(ctx, reliability.LimitedJob{CustomerID: "acme", Region: "south", SleepMS: 200}, &queue.AddOpts{Key: "waiter"})
	require.NoError(t, err)
	eventually(t, 15*time.Second, "the waiter waits for acme's slot", func(ctx context.Context) (bool, string, error) {
		e, err := q.Execution(ctx, "waiter")
		if err != nil {
			return false, "", err
		}
		return e.WaitingOn != "", fmt.Sprintf("state %s, waiting on %q", e.State, e.WaitingOn), nil
	}, a, b)
	w, err := q.Execution(ctx, "waiter")
	require.NoError(t, err)
	require.Equal(t, "customer_id:acme", w.WaitingOn)
	require.Equal(t, queue.StateQueued, w.State, "a waiting task is due, not running")
	h, err := q.Execution(ctx, "holder")
	require.NoError(t, err)
	require.Equal(t, queue.StateRunning, h.State)
	require.Equal(t, "SA", h.Worker)

	a.kill(t)
	killedAt := dbNow(t, pool)
	// A renews no more — once a renewal it sent before it died has ended:
	// its last leases are when the holder may run again and when its slot frees.
	waitConnectionsClosed(t, pool, "SA")
	var leaseEnd time.Time
	var slotEnd *time.Time // nil once a sweep deleted the lapsed slot
	require.NoError(t, pool.QueryRow(ctx, `SELECT lease_expires_at,
			(SELECT max(s.lease_expires_at) FROM shadows.slots s WHERE s.queue = t.queue AND s.task_key = t.key)
		FROM shadows.tasks t WHERE queue = $1 AND key = 'holder'`, name).Scan(&leaseEnd, &slotEnd))
	slotLapse := "already swept"
	if slotEnd != nil {
		slotLapse = slotEnd.Format("15:04:05.000")
	}
	t.Logf("A killed at %s; its lease on the holder lapses at %s (%v later), on acme's slot at %s",
		killedAt.Format("15:04:05.000"), leaseEnd.Format("15:04:05.000"), leaseEnd.Sub(killedAt).Round(time.Millisecond),
		slotLapse)

	bound := redelivery + 8*time.Second
	eventually(t, bound, "B completes both the holder and the waiter", func(ctx context.Context) (bool, string, error) {
		var done int
		var states string
		err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'completed'),
				string_agg(key || ' ' || state::text || ' ' || coalesce(waiting_on, '-'), ', ' ORDER BY key)
			FROM shadows.tasks WHERE queue = $1`, name).Scan(&done, &states)
		return done == 2, states, err
	}, b)
	doneAt := dbNow(t, pool)
	stopAll(t, 15*time.Second, b)

	runs := readLedger(t, pool, name)
	byKey := runsByKey(runs)
	require.Len(t, byKey["holder"], 2, "holder: A's run and B's redelivery: %v", byKey["holder"])
	require.Len(t, byKey["waiter"], 1, "waiter runs once: %v", byKey["waiter"])
	dead, redo, wr := byKey["holder"][0], byKey["holder"][1], byKey["waiter"][0]
	require.Equal(t, "SA", dead.worker)
	require.False(t, dead.finished)
	require.Equal(t, "SB", redo.worker)
	require.True(t, redo.redelivered)
	require.True(t, redo.finished)
	require.Equal(t, "SB", wr.worker)
	require.True(t, wr.finished)
	require.False(t, wr.redelivered)
	require.False(t, redo.startedAt.Before(leaseEnd), "the holder ran again at %s, while dead A's lease on it lasted until %s",
		redo.startedAt.Format("15:04:05.000"), leaseEnd.Format("15:04:05.000"))
	if slotEnd != nil {
		require.False(t, wr.startedAt.Before(*slotEnd), "the waiter started at %s, while dead A's lease on acme's slot lasted until %s",
			wr.startedAt.Format("15:04:05.000"), slotEnd.Format("15:04:05.000"))
	}
	first, second := redo, wr
	if wr.startedAt.Before(redo.startedAt) {
		first, second = wr, redo
	}
	require.False(t, second.startedAt.Before(first.finishedAt), "the two runs of acme overlapped: %v and %v", first, second)
	t.Logf("order after the kill: %s (%s) ran first, %v after the lease lapsed, %v after the kill; %s (%s) started %v after the kill; both done %v after the kill",
		first.key, map[bool]string{true: "redelivered", false: "waiter"}[first.redelivered],
		first.startedAt.Sub(leaseEnd).Round(time.Millisecond), first.startedAt.Sub(killedAt).Round(time.Millisecond),
		second.key, map[bool]string{true: "redelivered", false: "waiter"}[second.redelivered],
		second.startedAt.Sub(killedAt).Round(time.Millisecond), doneAt.Sub(killedAt).Round(time.Millisecond))

	for _, e := range executions(t, q, []string{"holder", "waiter"}) {
		require.Equal(t, queue.StateCompleted, e.State, e.Key)
		require.Equal(t, "SB", e.Worker, e.Key)
		require.Equal(t, 1, e.Attempt, "neither the kill nor the wait costs an attempt: %s", e.Key)
		require.Empty(t, e.WaitingOn, e.Key)
	}
	var slots int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM shadows.slots WHERE queue = $1`, name).Scan(&slots))
	require.Zero(t, slots, "every slot was released")
}
