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
// pgfloor does. Set against the burn it tells how much of the gap to
// pgfloor lies in the database (these statements) and how much in the
// worker around them.
func (b *bench) shadowsSQL(ctx context.Context) (sqlResult, error) {
	var r sqlResult
	o := b.o
	name := queueName("sql")
	defer func() {
		if err := cleanup(ctx, o.url, name); err != nil {
			logf("  %v", err)
		}
	}()
	pctx, cancel := context.WithTimeout(ctx, o.phaseTimeout)
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
	entries := make([]queue.Entry, o.n)
	for i := range entries {
		entries[i].Args = benchArgs{OrderID: 12345, CustomerID: "c-1"}
	}
	if _, err := q.AddMany(pctx, entries); err != nil {
		return r, fmt.Errorf("sql: AddMany: %w", err)
	}
	if _, err := b.admin.Exec(pctx, `ANALYZE shadows.tasks`); err != nil {
		return r, fmt.Errorf("sql: analyze: %w", err)
	}
	// The same lease and record lifetime as the burn's worker.
	ttl := queue.DefaultExecutionTTL.Seconds()
	lease := (5 * time.Minute).Seconds()
	queries := db.New()
	var (
		done     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; cancel() })
	}
	dbBefore, dbOK := dbCPUSeconds()
	selfBefore := processCPUSeconds()
	start := time.Now()
	for range sqlFloorWorkers {
		wg.Go(func() {
			for done.Load() < int64(o.n) && pctx.Err() == nil {
				rows, err := queries.ClaimDueUnstruck(pctx, pool, db.ClaimDueUnstruckParams{
					Queue: name, MaxRows: sqlFloorBatch, Worker: "bench-sql", LeaseSeconds: lease,
				})
				if err != nil {
					fail(fmt.Errorf("sql: claim: %w", err))
					return
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
						fail(fmt.Errorf("sql: claim returned task %s without a start time", row.Key))
						return
					}
					p.Keys[i], p.Generations[i], p.Deliveries[i] = row.Key, row.Generation, row.Deliveries
					p.StartedAts[i] = *row.StartedAt
				}
				res, err := queries.CompleteTasks(pctx, pool, p)
				if err != nil {
					fail(fmt.Errorf("sql: complete: %w", err))
					return
				}
				if res.N != int64(len(rows)) {
					fail(fmt.Errorf("sql: completed %d of %d claimed tasks", res.N, len(rows)))
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
	logf("shadows sql: %d tasks in %.2fs = %.0f tasks/s (ClaimDueUnstruck + CompleteTasks only, %d connections × %d per claim, ExecutionTTL=15m%s)",
		done.Load(), elapsed.Seconds(), r.rate, sqlFloorWorkers, sqlFloorBatch, cpu)
	return r, nil
}
