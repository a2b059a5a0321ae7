package reliability_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// TestWorkerProcessPolicies runs the scenarios of policies that must hold
// across worker processes — concurrency limits, strikes, perpetual chains —
// as parallel subtests. It runs after TestWorkerProcesses, not alongside
// it, so that the two sets of worker processes never compete for the
// server's connections at once.
func TestWorkerProcessPolicies(t *testing.T) {
	bin := buildTestworker(t)
	t.Run("ConcurrencyLimitsAcrossProcesses", func(t *testing.T) { t.Parallel(); testConcurrencyLimits(t, bin) })
	t.Run("SlotFreedAfterSIGKILL", func(t *testing.T) { t.Parallel(); testSlotFreedAfterKill(t, bin) })
	t.Run("StrikesAcrossProcesses", func(t *testing.T) { t.Parallel(); testStrikesAcrossProcesses(t, bin) })
	t.Run("PerpetualChainSurvivesSIGKILL", func(t *testing.T) { t.Parallel(); testPerpetualChain(t, bin) })
}

// eventuallyEvery is eventually with a polling interval of its own, for
// waits that must notice a state within a few milliseconds.
func eventuallyEvery(t *testing.T, timeout, every time.Duration, what string,
	check func(context.Context) (bool, string, error), procs ...*proc) {
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
		time.Sleep(every)
	}
}

// dbNow reads the database server's clock, the clock of the ledger and of
// the task records.
func dbNow(t *testing.T, pool *pgxpool.Pool) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var now time.Time
	require.NoError(t, pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&now))
	return now
}

// waitConnectionsClosed waits until the server has closed every connection
// of the worker named name, after the worker was killed. A statement the
// worker had sent before it died still runs to its end, and commits, on the
// server; only once its connections are gone is what it left behind final.
func waitConnectionsClosed(t *testing.T, pool *pgxpool.Pool, name string) {
	t.Helper()
	eventually(t, 15*time.Second, "the killed worker's connections are closed", func(ctx context.Context) (bool, string, error) {
		var n int
		var what string
		err := pool.QueryRow(ctx, `SELECT count(*), coalesce(string_agg(state || ': ' || left(query, 40), '; '), '')
			FROM pg_stat_activity WHERE application_name = $1`, "testworker "+name).Scan(&n, &what)
		return n == 0, fmt.Sprintf("%d connections: %s", n, what), err
	})
}

// activeStatements lists the statements of the worker named name that the
// server is running now (by the name in their sqlc comment, or their first
// words).
func activeStatements(t *testing.T, pool *pgxpool.Pool, name string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := pool.Query(ctx, `SELECT left(regexp_replace(query, '\s+', ' ', 'g'), 32) FROM pg_stat_activity
		WHERE application_name = $1 AND state = 'active'`, "testworker "+name)
	require.NoError(t, err)
	var out []string
	for rows.Next() {
		var q string
		require.NoError(t, rows.Scan(&q))
		out = append(out, q)
	}
	require.NoError(t, rows.Err())
	return out
}

// ---- interval sweeps over the ledger ----

// overlapStats is what a sweep over the runs' [start, end] intervals found.
type overlapStats struct {
	// peak is the most runs open at once per group, and peakAt when.
	peak   map[string]int
	peakAt map[string]time.Time
	// allPeak is the most runs open at once in all; distinctPeak the most
	// distinct groups open at once.
	allPeak, distinctPeak int
	// crossPairs counts pairs of overlapping runs of different groups.
	crossPairs int
}

// sweep computes overlapStats over finished runs, grouped by group. At equal
// times an end is taken before a start: the ledger is written inside the
// slot's lifetime (a run's end is recorded before its slot is released,
// which comes before the next holder can start), so equal stamps are not an
// overlap.
func sweep(runs []ledgerRun, group func(ledgerRun) string) overlapStats {
	type event struct {
		at    time.Time
		delta int
		group string
	}
	var events []event
	for _, r := range runs {
		g := group(r)
		events = append(events, event{r.startedAt, +1, g}, event{r.finishedAt, -1, g})
	}
	sort.SliceStable(events, func(i, j int) bool {
		if !events[i].at.Equal(events[j].at) {
			return events[i].at.Before(events[j].at)
		}
		return events[i].delta < events[j].delta
	})
	s := overlapStats{peak: map[string]int{}, peakAt: map[string]time.Time{}}
	open := map[string]int{}
	total := 0
	for _, e := range events {
		if e.delta > 0 {
			s.crossPairs += total - open[e.group]
		}
		open[e.group] += e.delta
		total += e.delta
		if open[e.group] == 0 {
			delete(open, e.group)
		}
		if e.delta > 0 {
			if open[e.group] > s.peak[e.group] {
				s.peak[e.group], s.peakAt[e.group] = open[e.group], e.at
			}
			s.allPeak = max(s.allPeak, total)
			s.distinctPeak = max(s.distinctPeak, len(open))
		}
	}
	return s
}

// overlapsOf lists, for failure messages, the runs of group g that were open
// at time at.
func overlapsOf(runs []ledgerRun, group func(ledgerRun) string, g string, at time.Time) string {
	var out []string
	for _, r := range runs {
		if group(r) == g && !r.startedAt.After(at) && r.finishedAt.After(at) {
			out = append(out, fmt.Sprintf("%s on %s [%s, %s]", r.key, r.worker,
				r.startedAt.Format("15:04:05.000000"), r.finishedAt.Format("15:04:05.000000")))
		}
	}
	return strings.Join(out, "; ")
}

// ---- watching a chain's row ----

// rowSampler reads a queue's task rows every few milliseconds and records
// every sample that does not show exactly one row, live (scheduled or
// running): the "never zero, never two" of a perpetual chain.
type rowSampler struct {
	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}

	mu         sync.Mutex
	samples    int
	errors     int
	violations []string
	states     map[string]int
}

// sampleRows starts sampling; it stops at finish or when the test ends.
func sampleRows(t *testing.T, pool *pgxpool.Pool, queueName string) *rowSampler {
	s := &rowSampler{stop: make(chan struct{}), done: make(chan struct{}), states: map[string]int{}}
	t.Cleanup(func() { s.finish() })
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(15 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var n, live int
			var rows string
			err := pool.QueryRow(ctx, `
				SELECT count(*), count(*) FILTER (WHERE state IN ('scheduled', 'running')),
				       coalesce(string_agg(key || ' ' || state::text || ' gen ' || generation, ', '), '')
				FROM shadows.tasks WHERE queue = $1`, queueName).Scan(&n, &live, &rows)
			cancel()
			s.mu.Lock()
			switch {
			case err != nil:
				s.errors++
			default:
				s.samples++
				if n != 1 || live != 1 {
					if len(s.violations) < 20 {
						s.violations = append(s.violations, fmt.Sprintf("%s: %d rows, %d live: [%s]",
							time.Now().Format("15:04:05.000"), n, live, rows))
					}
				} else {
					s.states[strings.Fields(rows)[1]]++
				}
			}
			s.mu.Unlock()
		}
	}()
	return s
}

// finish stops sampling and returns the number of samples, the violations
// and how often each state was seen.
func (s *rowSampler) finish() (int, []string, map[string]int) {
	s.stopOnce.Do(func() { close(s.stop) })
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples, slices.Clone(s.violations), s.states
}
