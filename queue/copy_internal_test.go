package queue

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/strike"
)

// AddMany's fast path streams a batch in with COPY only while the queue
// has no strikes; with one it writes nothing and leaves the batch to the
// INSERT path, which judges every task.
func TestCopyManyOnlyWithoutStrikes(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	q, err := New(pool, Config{Name: pgtest.QueueName(t)})
	require.NoError(t, err)
	ctx := t.Context()
	batch := func() []*Execution {
		var out []*Execution
		for _, key := range newKeys(2) {
			out = append(out, &Execution{Queue: q.Name(), Key: key, Task: "greet", Args: []byte(`{"name":"a"}`), Attempt: 1})
		}
		return out
	}
	rows := func() (n int) {
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM shadows.tasks WHERE queue = $1`, q.Name()).Scan(&n))
		return n
	}

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	copied, due, err := q.copyMany(ctx, tx, batch())
	require.NoError(t, err)
	require.True(t, copied, "no strikes: the batch is copied")
	require.True(t, due)
	require.NoError(t, tx.Commit(ctx))
	require.Equal(t, 2, rows())

	_, err = q.Strike(ctx, strike.Rule{Task: "greet", Param: "name", Op: strike.Eq, Value: "bad"})
	require.NoError(t, err)
	tx, err = pool.Begin(ctx)
	require.NoError(t, err)
	copied, _, err = q.copyMany(ctx, tx, batch())
	require.NoError(t, err)
	require.False(t, copied, "a strike: the batch goes to the INSERT path")
	require.NoError(t, tx.Commit(ctx))
	require.Equal(t, 2, rows(), "nothing written")
}
