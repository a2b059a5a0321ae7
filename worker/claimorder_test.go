package worker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

// backlogLedger records the order in which Count tasks ran: backlog tasks
// have N >= 0, the latecomers under test negative N.
type backlogLedger struct {
	mu      sync.Mutex
	backlog int         // backlog tasks run so far
	seenAt  map[int]int // latecomer N → backlog tasks run before it
	ranAt   map[int]time.Time
}

// workThroughBacklog adds n backlog tasks and starts one worker on them,
// each run taking a few milliseconds, so that the worker is still claiming
// full batches when the test adds its latecomers.
func workThroughBacklog(t *testing.T, b *bundle, n int) *backlogLedger {
	t.Helper()
	l := &backlogLedger{seenAt: map[int]int{}, ranAt: map[int]time.Time{}}
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Count]) error {
		l.mu.Lock()
		if task.Args.N < 0 {
			l.seenAt[task.Args.N] = l.backlog
			l.ranAt[task.Args.N] = time.Now()
		} else {
			l.backlog++
		}
		l.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		return nil
	}, worker.Policy{})
	entries := make([]queue.Entry, n)
	for i := range entries {
		entries[i] = queue.Entry{Args: Count{N: i}}
	}
	_, err := b.q.AddMany(t.Context(), entries)
	require.NoError(t, err)
	b.cfg.Concurrency = 4
	b.start(t)
	eventually(t, "the backlog is being worked off", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.backlog >= 100
	})
	return l
}

func (l *backlogLedger) ran(n int) (backlogBefore int, at time.Time, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	backlogBefore, ok = l.seenAt[n]
	return backlogBefore, l.ranAt[n], ok
}

// A claim that resumes past the position the previous one reached must not
// leave a task that became due behind that position waiting for the whole
// backlog. Tasks come back behind it with their old due time (a waiter
// woken when a concurrency slot frees, a held task restored), and the
// notification that comes with them makes the next claim scan from the
// start.
func TestTaskDueBehindABacklogRunsWhenNotified(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.cfg.CheckInterval = 10 * time.Second // only the notification can help
	const backlog = 3000
	l := workThroughBacklog(t, b, backlog)

	added := time.Now()
	_, err := b.pool.Exec(t.Context(), `WITH ins AS (
		INSERT INTO shadows.tasks (queue, key, task, args, run_at)
		VALUES ($1, 'woken', 'count', '{"n": -1}', now() - interval '1 hour'))
		SELECT pg_notify('shadows_ready', $1)`, b.q.Name())
	require.NoError(t, err)
	eventually(t, "the late task ran", func() bool { _, _, ok := l.ran(-1); return ok })
	before, at, _ := l.ran(-1)
	require.Less(t, before, backlog/2, "the late task waited for most of the backlog")
	require.Less(t, at.Sub(added), 5*time.Second, "not woken by the notification (the next poll is 10s away)")
}

// A task that becomes due behind the position without any notification
// (here: a row written directly, as another worker's failed claim leaves
// its rows) is found within CheckInterval, backlog or not.
func TestTaskDueBehindABacklogRunsWithinCheckInterval(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.cfg.CheckInterval = 300 * time.Millisecond
	const backlog = 3000
	l := workThroughBacklog(t, b, backlog)

	_, err := b.pool.Exec(t.Context(), `INSERT INTO shadows.tasks (queue, key, task, args, run_at)
		VALUES ($1, 'silent', 'count', '{"n": -2}', now() - interval '1 hour')`, b.q.Name())
	require.NoError(t, err)
	eventually(t, "the silent task ran", func() bool { _, _, ok := l.ran(-2); return ok })
	before, _, _ := l.ran(-2)
	require.Less(t, before, backlog/2, "the silent task waited for most of the backlog")
}
