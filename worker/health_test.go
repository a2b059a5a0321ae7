package worker_test

import (
	"context"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

// proxy forwards TCP connections to the database until it is cut, so a test
// can take the database away from a worker and give it back.
type proxy struct {
	target string
	ln     net.Listener
	mu     sync.Mutex
	conns  []net.Conn
	cut    bool
	wg     sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{target: target, ln: ln}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		_ = ln.Close()
		p.setCut(true)
		p.wg.Wait()
	})
	return p
}

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		p.wg.Go(func() { _, _ = io.Copy(up, c); _ = up.Close() })
		p.wg.Go(func() { _, _ = io.Copy(c, up); _ = c.Close() })
	}
}

// setCut closes every connection and refuses new ones, or allows them again.
func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.conns = nil
	}
}

func TestHealthFollowsTheDatabase(t *testing.T) {
	t.Parallel()
	b := setup(t)
	u, err := url.Parse(pgtest.URL(t))
	require.NoError(t, err)
	px := newProxy(t, u.Host)
	u.Host = px.ln.Addr().String()
	cfg, err := pgxpool.ParseConfig(u.String())
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

	px.setCut(true)
	eventually(t, "the worker is unhealthy without its database", func() bool { return !w.Healthy() })

	// The database comes back: the worker resumes on its own and runs work
	// added meanwhile.
	_, err = b.q.Add(t.Context(), Echo{}, &queue.AddOpts{Key: "after-outage"})
	require.NoError(t, err)
	px.setCut(false)
	eventually(t, "the worker is healthy again", w.Healthy)
	ex, err := b.wait(t, "after-outage")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
	require.Contains(t, b.logs.String(), "claim tasks failed; retrying")
}
