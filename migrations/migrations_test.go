package migrations_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/migrations"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func connect(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(t.Context(), url)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// schema describes the shadows schema's objects, to compare two databases.
func schema(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	rows, err := pool.Query(t.Context(), `
SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '')
FROM information_schema.columns WHERE table_schema = 'shadows'
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'shadows'
UNION ALL
SELECT 'function ' || p.proname || ' ' || md5(p.prosrc) || ' ' || coalesce(array_to_string(p.proconfig, ','), '')
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'shadows'
UNION ALL
SELECT 'view ' || table_name || ' ' || md5(view_definition) FROM information_schema.views WHERE table_schema = 'shadows'
ORDER BY 1`)
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return strings.Join(lines, "\n")
}

func hasSchema(t *testing.T, pool *pgxpool.Pool) bool {
	t.Helper()
	var ok bool
	require.NoError(t, pool.QueryRow(t.Context(), `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'shadows')`).Scan(&ok))
	return ok
}

func TestUpIsIdempotentAndDownWorks(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool := connect(t, pgtest.EmptyDatabase(t))

	require.ErrorIs(t, migrations.Check(ctx, pool), migrations.ErrNotMigrated)
	require.NoError(t, migrations.Up(ctx, pool))
	require.NoError(t, migrations.Check(ctx, pool))
	first := schema(t, pool)
	require.Contains(t, first, "column tasks.key text")

	require.NoError(t, migrations.Up(ctx, pool), "a second run is a no-op")
	require.Equal(t, first, schema(t, pool))
	statuses, err := migrations.Statuses(ctx, pool)
	require.NoError(t, err)
	require.NotEmpty(t, statuses)
	for _, s := range statuses {
		require.True(t, s.Applied, s.Name)
	}
	v, err := migrations.Version(ctx, pool)
	require.NoError(t, err)
	require.Equal(t, statuses[len(statuses)-1].Version, v)

	// One step down, then all the way, then up again.
	require.NoError(t, migrations.Down(ctx, pool))
	require.ErrorIs(t, migrations.Check(ctx, pool), migrations.ErrNotMigrated)
	require.NoError(t, migrations.DownTo(ctx, pool, 0))
	require.False(t, hasSchema(t, pool), "down removes the shadows schema")
	require.NoError(t, migrations.Up(ctx, pool))
	require.Equal(t, first, schema(t, pool))
}

// Slot rows live for one run each, so a busy limit key leaves a trail of
// dead slots until VACUUM. Only plain index scans mark the entries of dead
// rows so later probes skip them; every function that looks slots up must
// keep bitmap (and sequential) scans off, including any later migration's
// CREATE OR REPLACE, which drops settings it does not repeat.
func TestSlotFunctionsProbeByIndexOnly(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool := connect(t, pgtest.EmptyDatabase(t))
	require.NoError(t, migrations.Up(ctx, pool))
	rows, err := pool.Query(ctx, `
SELECT p.proname, coalesce(p.proconfig, '{}')
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'shadows' AND p.prosrc ~ 'shadows\.slots([^/]|$)' -- not lock_keys' lock names
ORDER BY 1`)
	require.NoError(t, err)
	type fn struct {
		Name   string
		Config []string
	}
	fns, err := pgx.CollectRows(rows, pgx.RowToStructByPos[fn])
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(fns), 6, "the functions that read or write slots")
	for _, f := range fns {
		require.Contains(t, f.Config, "enable_bitmapscan=off", f.Name)
		require.Contains(t, f.Config, "enable_seqscan=off", f.Name)
	}
}

func TestConcurrentMigratorsDoNotRace(t *testing.T) {
	t.Parallel()
	url := pgtest.EmptyDatabase(t)
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for range 6 {
		pool := connect(t, url)
		wg.Go(func() { errs <- migrations.Up(context.Background(), pool) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, migrations.Check(t.Context(), connect(t, url)))
}

func TestGooseCommandGivesTheSameSchema(t *testing.T) {
	t.Parallel()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	viaLibrary := connect(t, pgtest.EmptyDatabase(t))
	require.NoError(t, migrations.Up(t.Context(), viaLibrary))

	url := pgtest.EmptyDatabase(t)
	cmd := exec.CommandContext(t.Context(), "go", "tool", "-modfile=tools/go.mod", "goose",
		"-dir", "migrations", "-table", migrations.VersionTable, "postgres", url, "up")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	viaCommand := connect(t, url)
	require.Equal(t, schema(t, viaLibrary), schema(t, viaCommand))
	require.NoError(t, migrations.Check(t.Context(), viaCommand), "the library sees the command's migrations as applied")
	require.NoError(t, migrations.Up(t.Context(), viaCommand), "and has nothing left to do")
}

// Migration 00016 drops and creates the views again (they pin the types
// of the columns it changes); privileges granted on them must survive it,
// both ways.
func TestGrantsOnTheViewsSurviveMigrations(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool := connect(t, pgtest.EmptyDatabase(t))
	require.NoError(t, migrations.Up(ctx, pool))
	_, err := pool.Exec(ctx, `GRANT SELECT ON shadows.executions, shadows.concurrency TO PUBLIC`)
	require.NoError(t, err)
	grants := func() string {
		var acl string
		require.NoError(t, pool.QueryRow(ctx, `SELECT string_agg(c.relname || ' ' || a.privilege_type, ', ' ORDER BY c.relname)
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			CROSS JOIN LATERAL aclexplode(c.relacl) AS a
			WHERE n.nspname = 'shadows' AND c.relname IN ('executions', 'concurrency') AND a.grantee = 0`).Scan(&acl))
		return acl
	}
	const want = "concurrency SELECT, executions SELECT"
	require.Equal(t, want, grants())
	require.NoError(t, migrations.DownTo(ctx, pool, 15))
	require.Equal(t, want, grants(), "after migration 00016's down")
	require.NoError(t, migrations.Up(ctx, pool))
	require.Equal(t, want, grants(), "after migration 00016's up")
}
