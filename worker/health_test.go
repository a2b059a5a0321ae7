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

func TestHealthFollowsTheDatabase(t *testing.T) {
	t.Parallel()
	b := setup(t)
	px, proxied := pgtest.NewProxy(t, pgtest.URL(t))
	cfg, err := pgxpool.ParseConfig(proxied)
	require.NoError(t, err)
	cfg.ConnConfig.ConnectTimeout = time.Second
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)

	b.cfg.Queue.HeartbeatInterval = 100 * time.Millisecond
	b.cfg.ReconnectionDelay = 200 * time.Millisecond
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error { return nil }, worker.Policy{})
	w, err := worker.New(pool, b.reg, b.cfg)
	require.NoError(t, err)
	require.False(t, w.Healthy(), "not healthy before it runs")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("worker did not stop")
		}
	})
	eventually(t, "the worker is healthy", w.Healthy)

	px.Cut(true)
	eventually(t, "the worker is unhealthy without its database", func() bool { return !w.Healthy() })

	// The database comes back: the worker resumes on its own and runs work
	// added meanwhile.
	_, err = b.q.Add(t.Context(), Echo{}, &queue.AddOpts{Key: "after-outage"})
	require.NoError(t, err)
	px.Cut(false)
	eventually(t, "the worker is healthy again", w.Healthy)
	ex, err := b.wait(t, "after-outage")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
	require.Contains(t, b.logs.String(), "claim tasks failed; retrying")
}
