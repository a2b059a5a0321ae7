package main

// The scenarios of the strike and concurrency-limit issues: a burn with
// rows in the table that must not slow claims, a burn under 100 strike
// rules, a burn under a per-key concurrency limit, and the cost of tasks
// waiting on a full limit.

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/strike"
)

// burnScenario varies the burn of shadowsBurn.
type burnScenario struct {
	label    string
	describe string
	noTTL    bool
	// prepare runs before the timed AddMany, on the burn's queue.
	prepare func(ctx context.Context, q *queue.Queue) error
	// customers spreads the burn's tasks over that many customer_id values.
	customers int
	// limitMax limits each customer_id to that many running tasks.
	limitMax int
	// key, when set, gives each task a key of the caller's choosing
	// instead of the default (time-ordered) one.
	key func(i int) string
}

// crowded puts 100,000 future tasks and 10,000 due tasks that a hold strike
// keeps in the queue before the burn's tasks: rows that are not claimable
// and must not make claims slower. The held tasks are due first, so the
// burn also pays for setting them aside.
func crowded() burnScenario {
	return burnScenario{
		label:    "crowded",
		describe: "100,000 future tasks and 10,000 tasks held by a hold strike",
		prepare: func(ctx context.Context, q *queue.Queue) error {
			if _, err := q.Strike(ctx, strike.Rule{Task: "process_order", Param: "customer_id", Op: strike.Eq, Value: "held", Hold: true}); err != nil {
				return err
			}
			later := time.Now().Add(24 * time.Hour)
			entries := make([]queue.Entry, 0, 110_000)
			for range 100_000 {
				entries = append(entries, queue.Entry{Args: benchArgs{OrderID: 1, CustomerID: "future"}, When: later})
			}
			for range 10_000 {
				entries = append(entries, queue.Entry{Args: benchArgs{OrderID: 1, CustomerID: "held"}})
			}
			_, err := q.AddMany(ctx, entries)
			return err
		},
	}
}

// strikes100 stores 100 strike rules on the burned task that match none of
// its tasks, so every claim judges every task against them.
func strikes100() burnScenario {
	return burnScenario{
		label:    "strikes",
		describe: "100 strike rules that match no task",
		prepare: func(ctx context.Context, q *queue.Queue) error {
			for i := range 100 {
				var r strike.Rule
				switch i % 3 {
				case 0:
					r = strike.Rule{Task: "process_order", Param: "customer_id", Op: strike.Eq, Value: fmt.Sprint("blocked-", i)}
				case 1:
					r = strike.Rule{Param: "order_id", Op: strike.Gt, Value: 1_000_000 + i}
				default:
					r = strike.Rule{Task: "process_order", Param: "region", Op: strike.Eq, Value: fmt.Sprint("r", i),
						And: []strike.Condition{{Param: "order_id", Op: strike.Lt, Value: 0}}}
				}
				if _, err := q.Strike(ctx, r); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

// limited spreads the burn over 1,000 customers, each limited to 5 at once.
func limited() burnScenario {
	return burnScenario{label: "limits", describe: "1,000 customers, at most 5 running per customer", customers: 1000, limitMax: 5}
}

// randomKeys gives every task a random key (a version 4 UUID), as callers do
// who key tasks by what they are about rather than letting shadows pick:
// every claim and outcome then writes its primary-key entry into a random
// leaf page of that index instead of next to the previous one.
func randomKeys() burnScenario {
	return burnScenario{label: "keys", describe: "random (UUID v4) task keys", key: func(int) string { return uuid.NewString() }}
}

// waiting measures what 1,000 tasks waiting on one full limit cost: the
// transactions per second of the database and the CPU its processes use,
// over window, while one task holds the only slot.
func (b *bench) waiting(ctx context.Context, window time.Duration) (xactPerS, cpuPct float64, err error) {
	name := queueName("waiting")
	defer func() {
		if err := cleanup(ctx, b.o.url, name); err != nil {
			logf("  %v", err)
		}
	}()
	done := make(chan error, 1)
	var res childResult
	go func() {
		var err error
		res, err = runChild(ctx, b.o.url, childParams{
			Mode: "hold", Queue: name, N: 1000, Duration: window + 30*time.Second, Timeout: b.o.phaseTimeout,
			Logs: b.o.verboseWorker, LimitMax: 1,
		})
		done <- err
	}()
	pctx, cancel := context.WithTimeout(ctx, b.o.phaseTimeout)
	defer cancel()
	parked := func() (int, error) {
		var n int
		err := b.admin.QueryRow(pctx, `SELECT count(*) FROM shadows.tasks WHERE queue = $1 AND waiting_on IS NOT NULL AND state = 'scheduled'`, name).Scan(&n)
		return n, err
	}
	for {
		n, err := parked()
		if err != nil {
			return 0, 0, err
		}
		if n == 1000 {
			break
		}
		select {
		case err := <-done:
			return 0, 0, fmt.Errorf("waiting: the worker stopped early: %v", err)
		case <-pctx.Done():
			return 0, 0, fmt.Errorf("waiting: only %d of 1000 tasks parked", n)
		case <-time.After(50 * time.Millisecond):
		}
	}
	x0, err := xactCommits(pctx, b)
	if err != nil {
		return 0, 0, err
	}
	c0, _ := dbCPUSeconds()
	t0 := time.Now()
	select {
	case <-time.After(window):
	case <-pctx.Done():
		return 0, 0, pctx.Err()
	}
	x1, err := xactCommits(pctx, b)
	if err != nil {
		return 0, 0, err
	}
	c1, _ := dbCPUSeconds()
	el := time.Since(t0).Seconds()
	if n, err := parked(); err != nil || n != 1000 {
		return 0, 0, fmt.Errorf("waiting: %d tasks parked at the end of the window (%v)", n, err)
	}
	// Our own two queries count too; the rest is the worker's.
	xactPerS = float64(x1-x0-2) / el
	cpuPct = 100 * (c1 - c0) / el
	logf("shadows waiting: 1000 tasks parked on one key (max 1) while its holder runs: %.1f transactions/s, postgres CPU %.1f%% of one core over %.0fs",
		xactPerS, cpuPct, el)
	select {
	case err := <-done:
		if err != nil {
			return 0, 0, err
		}
	case <-pctx.Done():
		return 0, 0, pctx.Err()
	}
	_ = res
	return xactPerS, cpuPct, nil
}

func xactCommits(ctx context.Context, b *bench) (int64, error) {
	var n int64
	err := b.admin.QueryRow(ctx, `SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()`).Scan(&n)
	if err == nil {
		// pg_stat_database is only refreshed at transaction ends.
		_, err = b.admin.Exec(ctx, `SELECT pg_stat_clear_snapshot()`)
	}
	return n, err
}
