package worker_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/worker"
)

// statementCounter counts the statements sent through a pool; with match
// set, only those whose SQL contains it.
type statementCounter struct {
	match string
	n     atomic.Int64
}

func (c *statementCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if c.match == "" || strings.Contains(d.SQL, c.match) {
		c.n.Add(1)
	}
	return ctx
}

func (c *statementCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// An idle worker polls at its CheckInterval and otherwise waits: it must
// not claim in a loop. (It once did: a claim that came back short gave its
// reserved slots back with a signal that woke the claim loop at once.)
func TestIdleWorkerDoesNotBusyLoop(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg, err := pgxpool.ParseConfig(pgtest.URL(t))
	require.NoError(t, err)
	var counter statementCounter
	cfg.ConnConfig.Tracer = &counter
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	b.pool = pool
	b.cfg.CheckInterval = 100 * time.Millisecond
	worker.MustRegister(b.reg, func(context.Context, *worker.Task[Count]) error { return nil }, worker.Policy{})
	ex, err := b.q.Add(t.Context(), Count{N: 1}, nil)
	require.NoError(t, err)
	b.start(t)
	_, err = b.wait(t, ex.Key)
	require.NoError(t, err)
	time.Sleep(300 * time.Millisecond) // settle after the task
	before := counter.n.Load()
	const idle = time.Second
	time.Sleep(idle)
	sent := counter.n.Load() - before
	// About two statements per poll (claim, next due time) and a few for
	// heartbeats and housekeeping; a loop sends thousands.
	require.Less(t, sent, int64(60), "statements sent in %v of idling", idle)
}
