package pgtest_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestPoolHasShadowsSchema(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	var tasks *string
	require.NoError(t, pool.QueryRow(context.Background(), "select to_regclass('shadows.tasks')::text").Scan(&tasks))
	require.NotNil(t, tasks, "shadows.tasks should exist in the migrated database")
	assert.Equal(t, "shadows.tasks", *tasks)
}

func TestURLIsTheMigratedDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.URL(t))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var db string
	var tasks *string
	require.NoError(t, conn.QueryRow(ctx, "select current_database(), to_regclass('shadows.tasks')::text").Scan(&db, &tasks))
	assert.True(t, strings.HasPrefix(db, "shadows_test_"), "database %q", db)
	assert.NotNil(t, tasks)
}

func TestEmptyDatabaseHasNoSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := pgtest.EmptyDatabase(t)
	assert.NotEqual(t, pgtest.URL(t), u)
	conn, err := pgx.Connect(ctx, u)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int
	require.NoError(t, conn.QueryRow(ctx, "select count(*) from pg_namespace where nspname = 'shadows'").Scan(&n))
	assert.Zero(t, n)
}

func TestServerURL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.ServerURL(t))
	require.NoError(t, err)
	defer conn.Close(ctx)
	var ok bool
	require.NoError(t, conn.QueryRow(ctx, "select true").Scan(&ok))
	assert.True(t, ok)
}

func TestQueueNameIsUnique(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 1000 {
		q := pgtest.QueueName(t)
		assert.False(t, seen[q], "duplicate queue name %q", q)
		seen[q] = true
		assert.True(t, strings.HasPrefix(q, "TestQueueNameIsUnique-"), q)
	}
	t.Run("long name/with odd ch@rs "+strings.Repeat("x", 200), func(t *testing.T) {
		q := pgtest.QueueName(t)
		assert.LessOrEqual(t, len(q), 100)
		assert.NotContains(t, q, "/")
		assert.NotContains(t, q, " ")
		assert.True(t, strings.HasPrefix(q, "TestQueueNameIsUnique_long_name_with_odd_ch_rs_xxx"), q)
	})
}
