package worker

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/queue"
)

type countTracer struct{ nextDue atomic.Int64 }

func (c *countTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.Contains(d.SQL, "name: NextDue") {
		c.nextDue.Add(1)
	}
	return ctx
}
func (c *countTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

type spinArgs struct {
	N int `json:"n"`
}

func (spinArgs) TaskName() string { return "spin" }

// The claim loop with every slot taken (by the helper's full claim) while its
// own last claim was short (backlog false) goes to the idle wait; idleWait
// returned 0 while a task was due, so it polled NextDue back to back until
// a slot freed (2,805 times in 500ms). It must wait for a slot instead.
func TestClaimLoopWaitsWhenEverySlotIsBusy(t *testing.T) {
	cfg, err := pgxpool.ParseConfig(pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	tr := &countTracer{}
	cfg.ConnConfig.Tracer = tr
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	qcfg := queue.Config{Name: pgtest.QueueName(t)}
	w, err := New(pool, NewRegistry(), Config{Queue: qcfg, Concurrency: 4, NoAutomaticTasks: true, CheckInterval: 250 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w.prepareRun()
	if _, err := w.q.Add(t.Context(), spinArgs{N: 1}, nil); err != nil {
		t.Fatal(err)
	}
	w.running.Store(4) // every slot held by runs the helper started
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	var tasks sync.WaitGroup
	w.claimLoop(ctx, false, &tasks)
	tasks.Wait()
	if n := tr.nextDue.Load(); n > 10 {
		t.Fatalf("claim loop ran NextDue %d times in 500ms with every slot busy (CheckInterval 250ms)", n)
	}
}
