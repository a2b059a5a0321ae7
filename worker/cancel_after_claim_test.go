package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

// A cancel of a task claimed in the same batch as a limited task, sent while
// the batch's slot request is in the database (after the claim committed,
// before startAll registers the runs in flight), must not be missed (it was:
// the handler ran with a live context until the next lease renewal).
func TestCancelBetweenClaimAndStartIsNotMissed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.cfg.RedeliveryTimeout = 2 * time.Minute // renewal (the backstop) every 30s
	cancelled := make(chan bool, 1)
	started := make(chan struct{}, 1)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Block]) error {
		started <- struct{}{}
		select {
		case <-ctx.Done():
			cancelled <- true
			return ctx.Err()
		case <-time.After(10 * time.Second):
			cancelled <- false
			return nil
		}
	}, worker.Policy{})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Backup]) error {
		return nil
	}, worker.Policy{Concurrency: []worker.ConcurrencyLimit{{Max: 5}}})
	pinged := make(chan struct{}, 1)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		pinged <- struct{}{}
		return nil
	}, worker.Policy{})
	b.cfg.CheckInterval = time.Minute // after its first claim, only a NOTIFY wakes the worker
	ctx := t.Context()

	// Hold the limit key's lock so that the claim's take_slots waits.
	lock, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	_, err = lock.Exec(ctx, "SELECT shadows.lock_keys($1, ARRAY['task:backup'])", b.q.Name())
	require.NoError(t, err)

	b.start(t)
	// The cancel below must not be sent before the worker listens.
	waitUntilListening(t, b, pinged)

	// Both tasks become due at once, so one claim takes both.
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	_, err = b.q.AddTx(ctx, tx, Block{ID: "b"}, &queue.AddOpts{Key: "blk"})
	require.NoError(t, err)
	_, err = b.q.AddTx(ctx, tx, Backup{DB: "x"}, &queue.AddOpts{Key: "bk"})
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	eventually(t, "blk is claimed", func() bool {
		ex, err := b.q.Execution(ctx, "blk")
		return err == nil && ex.State == queue.StateRunning
	})
	require.NoError(t, b.q.Cancel(ctx, "blk"))
	time.Sleep(300 * time.Millisecond) // the notification arrives
	require.NoError(t, lock.Commit(ctx))
	<-started
	require.True(t, <-cancelled, "the cancel was missed: the handler ran on with a live context")
}
