package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

// A due row locked by another transaction (here a CancelTx not yet
// committed) is skipped by ClaimDue but seen by NextDue: the idle worker
// must not claim and poll back to back while the transaction stays open:
// it checks again a scheduling resolution later (before the fix: over
// 2,000 NextDue in the second).
func TestIdleWorkerDoesNotSpinOnALockedDueRow(t *testing.T) {
	b := setup(t)
	cfg, err := pgxpool.ParseConfig(pgtest.URL(t))
	require.NoError(t, err)
	tr := &statementCounter{match: "name: NextDue"}
	cfg.ConnConfig.Tracer = tr
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	b.pool = pool
	b.cfg.CheckInterval = 250 * time.Millisecond
	b.cfg.SchedulingResolution = 50 * time.Millisecond
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error { return nil }, worker.Policy{})
	ctx := t.Context()
	_, err = b.q.Add(ctx, Echo{Text: "x"}, &queue.AddOpts{Key: "locked"})
	require.NoError(t, err)
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, b.q.CancelTx(ctx, tx, "locked"))
	b.start(t)
	time.Sleep(time.Second)
	nd := tr.n.Load()
	require.NoError(t, tx.Rollback(ctx))
	t.Logf("in 1s: %d NextDue", nd)
	require.Less(t, nd, int64(35), "the idle worker polled back to back (SchedulingResolution 50ms)")
}
