package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shadows-go/shadows/db"
	"github.com/shadows-go/shadows/queue"
)

// sqlResult is the sql measure: shadows' own claim and completion
// statements driven the way pgfloor drives its own, with no worker.
type sqlResult struct {
	rate  float64 // tasks/s
	dbCPU float64 // seconds of local PostgreSQL CPU over the burn (0: not read)
}

// sqlFloorWorkers and sqlFloorBatch copy pgfloor's defaults, so the two
// differ only in the statements and the table they run against.
const (
	sqlFloorWorkers = 4
	sqlFloorBatch   = 1000
)

// shadowsSQL burns o.n tasks with the worker's claim (ClaimDueUnstruck, the
// statement it claims with through a backlog) and completion
// (CompleteTasks) statements alone: sqlFloorWorkers goroutines,
// each claiming sqlFloorBatch tasks and completing them at once, as
// pgfloor does, and going on from the last row it claimed, as the worker's
// claim loops do. Set against the burn it tells how much of the gap to
// pgfloor lies in the database (these statements) and how much in the
// worker around them.
func (b *bench) shadowsSQL(ctx context.Context) (sqlResult, error) {
	return b.sqlFloor(ctx, false)
}

// shadowsSQLContinuous is shadowsSQL while a producer adds AddMany batches
// of 5,000 flat out, as the continuous measure's producer does, for
// -duration: the continuous rate shadows' statements allow with no worker.
// Claims made by -duration are all completed, and the rate counts them over
// the time until the last completion.
func (b *bench) shadowsSQLContinuous(ctx context.Context) (sqlResult, error) {
	return b.sqlFloor(ctx, true)
}

func (b *bench) sqlFloor(ctx context.Context, continuous bool) (sqlResult, error) {
	var r sqlResult
	o := b.o
	label := "sql"
	if continuous {
		label = "sql_continuous"
	}
	name := queueName(label)
	defer func() {
		if err := cleanup(ctx, o.url, name); err != nil {
			logf("  %v", err)
		}
	}()
	timeout := o.phaseTimeout
	if continuous {
		timeout += o.duration
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pool, err := openPool(pctx, o.url, sqlFloorWorkers)
	if err != nil {
		return r, err
	}
	defer pool.Close()
	q, err := queue.New(pool, queue.Config{Name: name})
	if err != nil {
		return r, err
	}
	batch := func(n int) []queue.Entry {
		entries := make([]queue.Entry, n)
		for i := range entries {
			entries[i].Args = benchArgs{OrderID: 12345, CustomerID: "c-1"}
		}
		return entries
	}
	if !continuous {
		if _, err := q.AddMany(pctx, batch(o.n)); err != nil {
			return r, fmt.Errorf("%s: AddMany: %w", label, err)
		}
		if _, err := b.admin.Exec(pctx, `ANALYZE shadows.tasks`); err != nil {
			return r, fmt.Errorf("%s: analyze: %w", label, err)
		}
	}
	// The same lease and record lifetime as the burn's worker.
	ttl := queue.DefaultExecutionTTL.Seconds()
	lease := (5 * time.Minute).Seconds()
	queries := db.New()
	var (
		done     atomic.Int64
		inserted atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; cancel() })
	}
	// The loops stop at o.n tasks in a burn, at -duration in continuous.
	wctx, stopLoops := context.WithCancel(pctx)
	defer stopLoops()
	more := func() bool { return wctx.Err() == nil && (continuous || done.Load() < int64(o.n)) }
	if continuous {
		producer, err := openPool(pctx, o.url, 2)
		if err != nil {
			return r, err
		}
		defer producer.Close()
		pq, err := queue.New(producer, queue.Config{Name: name})
		if err != nil {
			return r, err
		}
		wg.Go(func() {
			for wctx.Err() == nil {
				if _, err := pq.AddMany(wctx, batch(5000)); err != nil {
					if wctx.Err() == nil {
						fail(fmt.Errorf("%s: AddMany: %w", label, err))
					}
					return
				}
				inserted.Add(5000)
			}
		})
		time.AfterFunc(o.duration, stopLoops)
	}
	dbBefore, dbOK := dbCPUSeconds()
	selfBefore := processCPUSeconds()
	start := time.Now()
	for range sqlFloorWorkers {
		wg.Go(func() {
			// Each loop goes on from the last row it claimed, as the
			// worker's claim loops do, and from the start once a claim
			// comes back short.
			var after *db.ClaimDueUnstruckRow
			for more() {
				cp := db.ClaimDueUnstruckParams{Queue: name, MaxRows: sqlFloorBatch, Worker: "bench-sql", LeaseSeconds: lease}
				if after != nil {
					cp.AfterRunAt, cp.AfterSeq = &after.RunAt, &after.Seq
				}
				rows, err := queries.ClaimDueUnstruck(wctx, pool, cp)
				if err != nil {
					if wctx.Err() == nil {
						fail(fmt.Errorf("%s: claim: %w", label, err))
					}
					return
				}
				after = nil
				if len(rows) == sqlFloorBatch {
					last := rows[len(rows)-1]
					after = &last
				}
				if len(rows) == 0 {
					time.Sleep(time.Millisecond)
					continue
				}
				// Completions lock rows in key order, as the worker's do.
				slices.SortFunc(rows, func(a, b db.ClaimDueUnstruckRow) int { return strings.Compare(a.Key, b.Key) })
				p := db.CompleteTasksParams{Queue: name, TtlSeconds: ttl,
					Keys: make([]string, len(rows)), Generations: make([]int64, len(rows)), Deliveries: make([]int32, len(rows)), StartedAts: make([]time.Time, len(rows))}
				for i, row := range rows {
					if row.StartedAt == nil {
						fail(fmt.Errorf("%s: claim returned task %s without a start time", label, row.Key))
						return
					}
					p.Keys[i], p.Generations[i], p.Deliveries[i] = row.Key, row.Generation, row.Deliveries
					p.StartedAts[i] = *row.StartedAt
				}
				// A claim that committed is completed even past -duration,
				// so no row is left running; only claims made in time count.
				res, err := queries.CompleteTasks(pctx, pool, p)
				if err != nil {
					fail(fmt.Errorf("%s: complete: %w", label, err))
					return
				}
				if res.N != int64(len(rows)) {
					fail(fmt.Errorf("%s: completed %d of %d claimed tasks", label, res.N, len(rows)))
					return
				}
				done.Add(res.N)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return r, firstErr
	}
	r.rate = float64(done.Load()) / elapsed.Seconds()
	cpu := fmt.Sprintf("; bench process CPU %.2fs", processCPUSeconds()-selfBefore)
	if dbAfter, ok := dbCPUSeconds(); ok && dbOK {
		r.dbCPU = dbAfter - dbBefore
		cpu += fmt.Sprintf(", database CPU %.2fs", r.dbCPU)
	}
	added := ""
	if continuous {
		added = fmt.Sprintf(", %d added by AddMany batches of 5,000", inserted.Load())
	}
	logf("shadows %s: %d tasks in %.2fs = %.0f tasks/s (ClaimDueUnstruck + CompleteTasks only, %d connections × %d per claim, ExecutionTTL=15m%s%s)",
		label, done.Load(), elapsed.Seconds(), r.rate, sqlFloorWorkers, sqlFloorBatch, added, cpu)
	return r, nil
}
