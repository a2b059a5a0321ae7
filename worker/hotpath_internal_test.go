package worker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shadows-go/shadows/db"
)

type hotArgs struct {
	OrderID    int    `json:"order_id"`
	CustomerID string `json:"customer_id"`
}

func (hotArgs) TaskName() string { return "hot_path" }

// BenchmarkHotPath measures the worker's own work per task between the
// claim statement and the completion statement, with no database: making
// the run (as from a claimed row), decoding its arguments, starting and
// running a no-op handler, handing over its outcome and building the
// completion statement's arrays. The end-to-end burn (make bench) runs
// this work on the same two cores as PostgreSQL, so every microsecond here
// is one the database does not get.
func BenchmarkHotPath(b *testing.B) {
	for _, lg := range []struct {
		name   string
		logger *slog.Logger
	}{
		{"discard", slog.New(slog.DiscardHandler)},
		{"text-warn", slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))},
	} {
		b.Run(lg.name, func(b *testing.B) { benchmarkHotPath(b, lg.logger) })
	}
}

func benchmarkHotPath(b *testing.B, logger *slog.Logger) {
	// A pool that never connects: nothing on this path may reach the
	// database.
	pool, err := pgxpool.New(context.Background(), "postgres://127.0.0.1:1/none?connect_timeout=1")
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	reg := NewRegistry()
	if err := Register(reg, func(context.Context, *Task[hotArgs]) error { return nil }, Policy{}); err != nil {
		b.Fatal(err)
	}
	w, err := New(pool, reg, Config{Concurrency: 1000, Logger: logger})
	if err != nil {
		b.Fatal(err)
	}
	w.prepareRun()

	const batch = 500
	keys := make([]string, batch)
	for i := range keys {
		keys[i] = fmt.Sprintf("0193c0de-%04x-7000-8000-%012x", i, i*7919)
	}
	args := []byte(`{"order_id": 12345, "customer_id": "c-1"}`)
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	for done := 0; done < b.N; done += batch {
		n := min(batch, b.N-done)
		claimed := make([]*execution, n)
		for i := range claimed {
			claimed[i] = w.newExecution(keys[i], "hot_path", slices.Clone(args), 1, 1, now, 1, &now, nil)
		}
		var tasks sync.WaitGroup
		w.running.Add(int64(n)) // as the claim reserves them
		w.startAll(claimed, &tasks)
		tasks.Wait()
		// What the finisher does with a batch, short of the statement.
		w.done.mu.Lock()
		out := w.done.pending
		w.done.pending = nil
		w.done.mu.Unlock()
		if len(out) != n {
			b.Fatalf("%d outcomes for %d runs", len(out), n)
		}
		order := make([]int, n)
		for i := range order {
			order[i] = i
		}
		slices.SortFunc(order, func(a, b int) int { return strings.Compare(out[a].key.key, out[b].key.key) })
		if !plainSuccesses(out) {
			b.Fatal("a no-op run did not succeed plainly")
		}
		p := db.CompleteTasksParams{Keys: make([]string, n), Generations: make([]int64, n), Deliveries: make([]int32, n)}
		for i, j := range order {
			o := &out[j]
			p.Keys[i], p.Generations[i], p.Deliveries[i] = o.key.key, o.key.generation, o.deliveries
			w.inflight.remove(o.key)
		}
		_ = p
	}
	// CPU time, not wall time, is what the database loses to the worker:
	// idle processors spinning for work count here and not in ns/op.
	b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
