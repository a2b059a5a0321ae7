package pgcluster

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// requireBinaries fails the test when the PostgreSQL binaries are missing in
// CI, and skips it elsewhere.
func requireBinaries(t *testing.T) {
	t.Helper()
	if _, err := FindBinaries(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
}

// parentDir returns a directory for clusters that PostgreSQL's user can
// reach also when the tests run as root (t.TempDir is private to root).
func parentDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgclustertest-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestByVersion(t *testing.T) {
	root := t.TempDir()
	for _, v := range []string{"9.6", "15", "10", "devel"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, v, "bin"), 0o755))
	}
	got := byVersion(filepath.Join(root, "*", "bin"))
	var versions []string
	for _, d := range got {
		versions = append(versions, filepath.Base(filepath.Dir(d)))
	}
	assert.Equal(t, []string{"15", "10", "9.6", "devel"}, versions)
}

func TestStartStop(t *testing.T) {
	requireBinaries(t)
	ctx := context.Background()
	began := time.Now()
	c, err := Start(ctx, Options{Dir: parentDir(t), Logf: t.Logf})
	require.NoError(t, err)
	t.Logf("started in %v", time.Since(began))
	t.Cleanup(func() { c.Stop() })

	conn, err := pgx.Connect(ctx, c.URL())
	require.NoError(t, err)
	var user, fsync, maxConns, encoding string
	require.NoError(t, conn.QueryRow(ctx,
		"select current_user, current_setting('fsync'), current_setting('max_connections'), pg_encoding_to_char(encoding) from pg_database where datname = current_database()").
		Scan(&user, &fsync, &maxConns, &encoding))
	assert.Equal(t, "postgres", user)
	assert.Equal(t, "off", fsync)
	assert.Equal(t, "200", maxConns)
	assert.Equal(t, "UTF8", encoding)
	require.NoError(t, conn.Close(ctx))

	require.NoError(t, c.Stop())
	require.NoError(t, c.Stop(), "Stop is idempotent")
	_, err = os.Stat(c.dir)
	assert.True(t, os.IsNotExist(err), "directory %s removed: %v", c.dir, err)
	_, err = pgx.Connect(ctx, c.URL())
	assert.Error(t, err, "server stopped")
}

func TestStartReapsOrphans(t *testing.T) {
	requireBinaries(t)
	ctx := context.Background()
	parent := parentDir(t)
	orphan, err := Start(ctx, Options{Dir: parent})
	require.NoError(t, err)
	t.Cleanup(func() { orphan.Stop() })

	// Make the orphan's owner a process that has exited.
	dead := exec.Command("true")
	require.NoError(t, dead.Run())
	require.NoError(t, os.WriteFile(filepath.Join(orphan.dir, ownerFile), []byte(ownerID(dead.Process.Pid)), 0o644))

	// And one whose server died, its pid now unused.
	crashed := filepath.Join(parent, dirPrefix+"crashed")
	require.NoError(t, os.MkdirAll(filepath.Join(crashed, "data"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(crashed, ownerFile), []byte(ownerID(dead.Process.Pid)), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(crashed, "data", "postmaster.pid"), []byte(strconv.Itoa(dead.Process.Pid)+"\n"), 0o600))

	c, err := Start(ctx, Options{Dir: parent, Logf: t.Logf})
	require.NoError(t, err)
	defer c.Stop()
	for _, dir := range []string{orphan.dir, crashed} {
		_, err = os.Stat(dir)
		assert.True(t, os.IsNotExist(err), "orphan %s removed: %v", dir, err)
	}
	_, err = pgx.Connect(ctx, orphan.URL())
	assert.Error(t, err, "orphan's server stopped")

	// A cluster whose owner lives is left alone.
	require.NoError(t, os.WriteFile(filepath.Join(c.dir, ownerFile), []byte(ownerID(os.Getpid())), 0o644))
	c2, err := Start(ctx, Options{Dir: parent})
	require.NoError(t, err)
	defer c2.Stop()
	_, err = os.Stat(c.dir)
	assert.NoError(t, err)
}
