// Package pgcluster starts throwaway PostgreSQL clusters from the PostgreSQL
// server binaries installed on the machine.
//
// Shadows' tests and demos need a real PostgreSQL server. A shared server is
// not always at hand and a Docker engine not always installed, but a machine
// that develops against PostgreSQL usually has its binaries, and a private
// cluster made with initdb starts in a second or two, needs no configuration
// and leaves nothing behind:
//
//	c, err := pgcluster.Start(ctx, pgcluster.Options{})
//	if err != nil { … }
//	defer c.Stop()
//	pool, err := pgxpool.New(ctx, c.URL())
//
// A cluster lives in a fresh temporary directory, which holds its data
// directory, its log (postgres.log) and its Unix socket. Its server listens
// on 127.0.0.1 only, on a free port, and trusts every connection: user
// postgres, no password. It is tuned for speed, not durability: fsync,
// synchronous_commit and full_page_writes are off, so a crash of the machine
// may lose or corrupt data, which does not matter for a cluster that is
// deleted when it stops. max_connections is 200, so that tests running
// several worker pools at once do not run out of connections. The cluster
// uses the C locale and UTF8 encoding whatever the environment says.
//
// initdb and pg_ctl refuse to run as root. When the process runs as root,
// pgcluster runs them, and so the server, as the operating-system user
// postgres (which PostgreSQL's packages create) and gives that user the
// cluster's directory, so the parent directory (Options.Dir, else the
// system's temporary directory) must be reachable by that user.
//
// A process that dies without calling Stop, for example a test binary killed
// by its timeout, leaves its server running. Start therefore first stops and
// removes the clusters, in the same parent directory, whose process on this
// host has exited.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// dirPrefix starts the name of every cluster directory.
	dirPrefix = "pgcluster-"
	// ownerFile, in a cluster directory, holds "PID HOSTNAME" of the process
	// that started the cluster.
	ownerFile = "owner"
	// superuser is the cluster's bootstrap superuser.
	superuser = "postgres"
	// startAttempts bounds the retries when another process takes the port
	// chosen for the server before the server binds it.
	startAttempts = 3
)

// Options configure Start. The zero value is ready to use.
type Options struct {
	// Dir is the directory in which the cluster's temporary directory is
	// made. Empty means os.TempDir().
	Dir string
	// Logf, if not nil, receives progress messages.
	Logf func(format string, args ...any)
}

// Cluster is a running throwaway PostgreSQL cluster. Stop it when done.
type Cluster struct {
	dir  string
	port int
	run  runner

	stopOnce sync.Once
	stopErr  error
}

// FindBinaries returns the directory holding the PostgreSQL server binaries
// initdb, pg_ctl and postgres. It looks on PATH first, then in
// /usr/lib/postgresql/VERSION/bin (Debian, Ubuntu; newest version first),
// /usr/pgsql-VERSION/bin (Red Hat; newest first) and /usr/local/pgsql/bin
// (built from source).
func FindBinaries() (dir string, err error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		// Prefer the directory of the real binaries when PATH holds links.
		if real, err := filepath.EvalSymlinks(p); err == nil && hasBinaries(filepath.Dir(real)) {
			return filepath.Dir(real), nil
		}
		if hasBinaries(filepath.Dir(p)) {
			return filepath.Dir(p), nil
		}
	}
	var candidates []string
	candidates = append(candidates, byVersion("/usr/lib/postgresql/*/bin")...)
	candidates = append(candidates, byVersion("/usr/pgsql-*/bin")...)
	candidates = append(candidates, "/usr/local/pgsql/bin")
	for _, d := range candidates {
		if hasBinaries(d) {
			return d, nil
		}
	}
	return "", errors.New("pgcluster: PostgreSQL server binaries (initdb, pg_ctl, postgres) not found " +
		"on PATH, in /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin or /usr/local/pgsql/bin; " +
		"install the PostgreSQL server (for example apt-get install postgresql)")
}

// byVersion returns the directories matching pattern, newest PostgreSQL
// version first. The version is read from the parent of each directory:
// "15" in /usr/lib/postgresql/15/bin, "9.6" in /usr/pgsql-9.6/bin.
func byVersion(pattern string) []string {
	dirs, _ := filepath.Glob(pattern)
	version := func(d string) float64 {
		v := strings.TrimPrefix(filepath.Base(filepath.Dir(d)), "pgsql-")
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return -1
		}
		return f
	}
	sort.SliceStable(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	return dirs
}

func hasBinaries(dir string) bool {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// Start creates and starts a new cluster. ctx bounds the start only: the
// cluster runs until Stop. On failure, everything made so far is removed and
// the error carries the output of initdb or pg_ctl and the server's log.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	bin, err := FindBinaries()
	if err != nil {
		return nil, err
	}
	attr, uid, gid, err := runAsAttr()
	if err != nil {
		return nil, err
	}
	parent := opts.Dir
	if parent == "" {
		parent = os.TempDir()
	}
	if parent, err = filepath.Abs(parent); err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	r := runner{bin: bin, attr: attr}
	reapOrphans(parent, r, logf)

	dir, err := os.MkdirTemp(parent, dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	r.dir = dir
	c := &Cluster{dir: dir, run: r}
	ok := false
	defer func() {
		if !ok {
			_ = c.shutdown("immediate")
		}
	}()
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(ownerID(os.Getpid())), 0o644); err != nil {
		return nil, fmt.Errorf("pgcluster: %w", err)
	}
	if uid >= 0 {
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, fmt.Errorf("pgcluster: give %s to user %s: %w", dir, runAsUser, err)
		}
	}

	began := time.Now()
	if _, err := r.cmd(ctx, "initdb", "-D", c.dataDir(), "-A", "trust", "-U", superuser,
		"--no-sync", "-E", "UTF8", "--no-locale"); err != nil {
		if uid >= 0 {
			err = fmt.Errorf("%w\n(as root, initdb runs as user %s, which must be able to reach %s)", err, runAsUser, dir)
		}
		return nil, err
	}
	logf("pgcluster: initdb %s took %v", c.dataDir(), time.Since(began).Round(time.Millisecond))

	conf := fmt.Sprintf(`
# Added by pgcluster: a private, throwaway cluster.
listen_addresses = '127.0.0.1'
unix_socket_directories = '%s'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
`, strings.ReplaceAll(dir, "'", "''"))
	f, err := os.OpenFile(filepath.Join(c.dataDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString(conf)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return nil, fmt.Errorf("pgcluster: configure: %w", err)
	}

	for attempt := 1; ; attempt++ {
		began = time.Now()
		c.port, err = freePort()
		if err != nil {
			return nil, fmt.Errorf("pgcluster: %w", err)
		}
		_, err = r.cmd(ctx, "pg_ctl", "start", "-D", c.dataDir(), "-l", c.logFile(), "-w", "-t", "60",
			"-o", "-p "+strconv.Itoa(c.port))
		if err == nil {
			break
		}
		log := c.logTail()
		if attempt < startAttempts && ctx.Err() == nil &&
			(strings.Contains(log, "could not bind") || strings.Contains(log, "already in use")) {
			logf("pgcluster: port %d was taken, trying another", c.port)
			continue
		}
		return nil, fmt.Errorf("%w\nserver log %s:\n%s", err, c.logFile(), log)
	}
	logf("pgcluster: server started at %s in %v", c.URL(), time.Since(began).Round(time.Millisecond))
	ok = true
	return c, nil
}

// URL returns the connection string of the cluster's postgres database as
// its superuser: postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable.
func (c *Cluster) URL() string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/postgres?sslmode=disable", superuser, c.port)
}

// Stop shuts the server down (pg_ctl stop -m fast, which disconnects the
// clients) and removes the cluster's directory. Only the first call does
// anything; later calls return its result.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() { c.stopErr = c.shutdown("fast") })
	return c.stopErr
}

// shutdown stops the server if it runs and removes the cluster's directory.
func (c *Cluster) shutdown(mode string) error {
	var errs []error
	if _, err := os.Stat(filepath.Join(c.dataDir(), "postmaster.pid")); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := c.run.cmd(ctx, "pg_ctl", "stop", "-D", c.dataDir(), "-m", mode, "-w", "-t", "60"); err != nil {
			if mode == "immediate" {
				errs = append(errs, err)
			} else if _, err2 := c.run.cmd(ctx, "pg_ctl", "stop", "-D", c.dataDir(), "-m", "immediate", "-w"); err2 != nil {
				errs = append(errs, err, err2)
			}
		}
	}
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, fmt.Errorf("pgcluster: %w", err))
	}
	return errors.Join(errs...)
}

func (c *Cluster) dataDir() string { return filepath.Join(c.dir, "data") }
func (c *Cluster) logFile() string { return filepath.Join(c.dir, "postgres.log") }

// logTail returns the end of the server's log.
func (c *Cluster) logTail() string {
	b, err := os.ReadFile(c.logFile())
	if err != nil {
		return "(" + err.Error() + ")"
	}
	const max = 4000
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return strings.TrimSpace(string(b))
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// runner runs the PostgreSQL binaries of one cluster.
type runner struct {
	bin  string               // directory of the binaries
	dir  string               // working directory
	attr *syscall.SysProcAttr // nil, or the user to run as
}

// cmd runs a binary and returns its output, which the error includes.
func (r runner) cmd(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(r.bin, name), args...)
	cmd.Dir = r.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.SysProcAttr = r.attr
	// The server that pg_ctl starts writes to its log file, not to our
	// pipes; WaitDelay guards against a child that holds them anyway.
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("pgcluster: %s %s: %w\n%s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ownerID identifies a cluster's owning process in its owner file.
func ownerID(pid int) string {
	host, _ := os.Hostname()
	return strconv.Itoa(pid) + " " + host + "\n"
}

// reapOrphans stops and removes the clusters in parent whose owning process,
// on this host, has exited. Failures are only logged.
func reapOrphans(parent string, r runner, logf func(string, ...any)) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	host, _ := os.Hostname()
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), dirPrefix) {
			continue
		}
		dir := filepath.Join(parent, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // not ours, or being created
		}
		fields := strings.Fields(string(b))
		if len(fields) != 2 || fields[1] != host {
			continue
		}
		pid, err := strconv.Atoi(fields[0])
		if err != nil || processAlive(pid) {
			continue
		}
		logf("pgcluster: removing %s, left behind by process %d", dir, pid)
		r.dir = dir
		orphan := &Cluster{dir: dir, run: r}
		if orphan.serverMayRun() {
			err = orphan.shutdown("immediate")
		} else {
			err = os.RemoveAll(dir)
		}
		if err != nil {
			logf("pgcluster: %v", err)
		}
	}
}

// serverMayRun reports whether the server of an orphaned cluster may still
// run: its postmaster.pid names a live process which, where /proc can tell,
// runs on the cluster's data directory. This keeps pg_ctl from signalling a
// process that reused the pid of a server that died long ago.
func (c *Cluster) serverMayRun() bool {
	b, err := os.ReadFile(filepath.Join(c.dataDir(), "postmaster.pid"))
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || !processAlive(pid) {
		return false
	}
	if _, err := os.Stat("/proc/self/cmdline"); err != nil {
		return true // no /proc here: trust postmaster.pid
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return err == nil && strings.Contains(string(cmdline), "\x00"+c.dataDir()+"\x00")
}
