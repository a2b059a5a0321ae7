// Package pgtest gives tests a PostgreSQL database with the shadows schema.
//
// Every package whose tests use it calls Main from its TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// The first test that asks for a database finds a server, once per test
// binary, in this order:
//
//  1. the server of SHADOWS_TEST_DATABASE_URL, if that is set (its user must
//     be allowed to create databases);
//  2. a container started through testcontainers, if a Docker engine looks
//     reachable (DOCKER_HOST is set or a docker.sock exists);
//  3. a throwaway cluster started by [pgcluster] from the PostgreSQL server
//     binaries installed on the machine.
//
// With none of them, the test fails with a message telling how to provide
// one; it is never skipped.
//
// On that server each test binary, that is each package under test, creates
// its own database, shadows_test_<random>, and migrates it once, so packages
// tested in parallel do not see each other's data. Tests within a package
// share the database and isolate themselves by queue name (see QueueName).
// When the tests are done, Main drops the database, stops the container or
// cluster it started, and checks for leaked goroutines.
//
// All functions are safe for parallel tests.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/shadows-go/shadows/internal/pgcluster"
	"github.com/shadows-go/shadows/migrations"
)

// EnvURL names the environment variable that points the tests at an existing
// server. Its database is used only to connect: the tests create and drop
// their own databases.
const EnvURL = "SHADOWS_TEST_DATABASE_URL"

// setupTimeout bounds finding a server and preparing the database; pulling
// an image for the Docker engine takes most of it.
const setupTimeout = 5 * time.Minute

// opTimeout bounds one administrative statement or connection.
const opTimeout = time.Minute

// server is the server the test binary uses and the database made on it.
type server struct {
	adminURL string       // maintenance database, for CREATE/DROP DATABASE
	dbName   string       // the migrated database of this test binary
	dbURL    string       // its connection string
	source   string       // where the server came from, for messages
	stop     func() error // stops what setup started; nil if nothing
	docker   bool         // a container was started
}

var (
	mainCalled bool // set by Main before it runs the tests

	setupOnce sync.Once
	srv       *server
	srvErr    error
)

// Main runs the tests of m and then cleans up: it drops the package's
// database, stops any container or cluster started for the tests and, if
// the tests passed, fails the run when goroutines leaked. ignore adds
// goleak options for goroutines a package knowingly leaves running. Main
// does not return: it exits with the tests' status.
func Main(m *testing.M, ignore ...goleak.Option) {
	mainCalled = true
	code := m.Run()
	if err := teardown(); err != nil {
		fmt.Fprintln(os.Stderr, "pgtest: cleaning up:", err)
		if code == 0 {
			code = 1
		}
	}
	if code == 0 {
		if err := goleak.Find(leakOptions(ignore)...); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest: goroutines leaked by the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// leakOptions returns the goleak options: the caller's, and those for the
// goroutines that a Docker engine's client leaves behind.
func leakOptions(ignore []goleak.Option) []goleak.Option {
	opts := append([]goleak.Option(nil), ignore...)
	if srv != nil && srv.docker {
		opts = append(opts, dockerLeakOptions()...)
	}
	return opts
}

// get returns the server and database of this test binary, setting them up
// on the first call. It fails t when there is none.
func get(t testing.TB) *server {
	t.Helper()
	if !mainCalled {
		t.Fatal("pgtest: the package must call pgtest.Main(m) from its TestMain, which cleans up after the tests")
	}
	setupOnce.Do(func() { srv, srvErr = setup() })
	if srvErr != nil {
		t.Fatal(srvErr)
	}
	return srv
}

// setup finds a server and creates and migrates this binary's database.
func setup() (*server, error) {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	s, err := findServer(ctx)
	if err != nil {
		return nil, err
	}
	began := time.Now()
	s.dbName, err = createDatabase(ctx, s.adminURL)
	if err == nil {
		s.dbURL, err = withDatabase(s.adminURL, s.dbName)
	}
	if err == nil {
		err = migrate(ctx, s.dbURL)
	}
	if err != nil {
		if terr := s.teardown(); terr != nil {
			err = errors.Join(err, terr)
		}
		return nil, fmt.Errorf("pgtest: preparing the test database on the server from %s: %w", s.source, err)
	}
	logf("pgtest: database %s created and migrated in %v", s.dbName, time.Since(began).Round(time.Millisecond))
	return s, nil
}

// findServer returns the first server available, in the documented order.
func findServer(ctx context.Context) (*server, error) {
	if u := os.Getenv(EnvURL); u != "" {
		return &server{adminURL: u, source: EnvURL}, nil
	}
	var tried []string
	if dockerReachable() {
		began := time.Now()
		u, stop, err := startContainer(ctx)
		if err == nil {
			logf("pgtest: PostgreSQL container started in %v", time.Since(began).Round(time.Millisecond))
			return &server{adminURL: u, source: "a Docker container", stop: stop, docker: true}, nil
		}
		logf("pgtest: no PostgreSQL container: %v", err)
		tried = append(tried, "Docker: "+err.Error())
	} else {
		tried = append(tried, "Docker: no engine (DOCKER_HOST is not set and no docker.sock exists)")
	}
	began := time.Now()
	c, err := pgcluster.Start(ctx, pgcluster.Options{Logf: logf})
	if err == nil {
		logf("pgtest: throwaway cluster started in %v", time.Since(began).Round(time.Millisecond))
		return &server{adminURL: c.URL(), source: "a throwaway cluster", stop: c.Stop}, nil
	}
	tried = append(tried, "local PostgreSQL binaries: "+err.Error())
	return nil, fmt.Errorf("pgtest: no PostgreSQL server for the tests. Provide one by either\n"+
		"  - setting %s to the URL of a server whose user may create databases,\n"+
		"    e.g. postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable;\n"+
		"  - installing the PostgreSQL server binaries (initdb, pg_ctl; e.g. apt-get install postgresql);\n"+
		"  - or running a Docker engine.\n"+
		"Tried:\n  - %s", EnvURL, strings.Join(tried, "\n  - "))
}

// dockerReachable reports whether a Docker engine plausibly answers, so that
// machines without one do not wait for testcontainers to give up.
func dockerReachable() bool {
	if os.Getenv("DOCKER_HOST") != "" {
		return true
	}
	socks := []string{"/var/run/docker.sock"}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		socks = append(socks, filepath.Join(d, "docker.sock"))
	}
	if home, err := os.UserHomeDir(); err == nil {
		socks = append(socks, filepath.Join(home, ".docker", "run", "docker.sock"))
	}
	for _, s := range socks {
		if fi, err := os.Stat(s); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return true
		}
	}
	return false
}

// teardown drops the binary's database and stops its server, if set up.
func teardown() error {
	closeExamplePool()
	if srv == nil {
		return nil
	}
	return srv.teardown()
}

func (s *server) teardown() error {
	var errs []error
	if s.dbName != "" {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		errs = append(errs, dropDatabase(ctx, s.adminURL, s.dbName))
		cancel()
	}
	if s.stop != nil {
		errs = append(errs, s.stop())
	}
	return errors.Join(errs...)
}

// logf reports progress on standard error when the tests run with -v.
func logf(format string, args ...any) {
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
	}
}

// Pool returns a new pool on the package's migrated database. It is closed
// when the test and its subtests finish.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	s := get(t)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	pool, err := pgxpool.New(ctx, s.dbURL)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(pool.Close)
	if err := pool.Ping(ctx); err != nil {
		t.Fatalf("pgtest: connecting to %s: %v", s.dbName, err)
	}
	return pool
}

// URL returns the connection string of the package's migrated database, for
// example to hand to a worker subprocess.
func URL(t testing.TB) string {
	t.Helper()
	return get(t).dbURL
}

// ServerURL returns the connection string of the server's maintenance
// database: SHADOWS_TEST_DATABASE_URL as given, else the database postgres
// of the container or cluster. Use it for server-wide statements such as
// pg_terminate_backend, not for shadows' tables.
func ServerURL(t testing.TB) string {
	t.Helper()
	return get(t).adminURL
}

// EmptyDatabase creates a further database without the shadows schema and
// returns its connection string, for migration tests. It is dropped, with
// any connections still open to it, when the test finishes.
func EmptyDatabase(t testing.TB) string {
	t.Helper()
	s := get(t)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	name, err := createDatabase(ctx, s.adminURL)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := dropDatabase(ctx, s.adminURL, name); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	u, err := withDatabase(s.adminURL, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return u
}

// maxQueueName is the longest name QueueName returns, in bytes.
const maxQueueName = 100

// QueueName returns a queue name unique to this call: the test's name, with
// characters other than ASCII letters, digits, '_' and '-' replaced by '_',
// shortened, and a random suffix. It is at most 100 bytes long.
func QueueName(t testing.TB) string {
	t.Helper()
	suffix := "-" + randomHex(8)
	var b strings.Builder
	for _, r := range t.Name() {
		if b.Len() >= maxQueueName-len(suffix) {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String() + suffix
}

// randomHex returns 2n random hexadecimal digits.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails
	return hex.EncodeToString(b)
}

// createDatabase creates a database with a fresh name and returns the name.
func createDatabase(ctx context.Context, adminURL string) (string, error) {
	name := "shadows_test_" + randomHex(8)
	err := withConn(ctx, adminURL, func(conn *pgx.Conn) error {
		for attempt := 1; ; attempt++ {
			_, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
			// 55006: another session was using the template database;
			// that happens when other test binaries create theirs.
			var pgErr *pgconn.PgError
			if attempt < 10 && errors.As(err, &pgErr) && pgErr.Code == "55006" {
				select {
				case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
					continue
				case <-ctx.Done():
				}
			}
			return err
		}
	})
	if err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return name, nil
}

// dropDatabase drops a database, disconnecting its sessions.
func dropDatabase(ctx context.Context, adminURL, name string) error {
	err := withConn(ctx, adminURL, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
		return err
	})
	if err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

// withConn runs fn on a new connection to url.
func withConn(ctx context.Context, url string, fn func(*pgx.Conn) error) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return fn(conn)
}

// migrate applies the shadows migrations to the database at url.
func migrate(ctx context.Context, url string) error {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	return migrations.Up(ctx, pool)
}

// withDatabase returns connString with its database replaced by name. It
// accepts URLs (postgres://…) and keyword/value strings (host=… dbname=…).
func withDatabase(connString, name string) (string, error) {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			return "", fmt.Errorf("parse the server URL: %w", err)
		}
		u.Path = "/" + name
		u.RawPath = ""
		return u.String(), nil
	}
	// In a keyword/value string, the last setting of a keyword wins.
	return connString + " dbname=" + name, nil
}

// The pool that ExamplePool hands to a package's runnable examples.
var (
	examplePoolMu sync.Mutex
	examplePool   *pgxpool.Pool
)

// ExamplePool returns a pool on the package's migrated database, for
// runnable examples (func ExampleXxx), which have no testing.TB to fail or
// clean up with. The first call finds the server and connects, as Pool
// does for tests; every example of the package then shares that pool, and
// Main closes it when the tests and examples are done. The examples must
// not close it.
//
// Since an example has no other way to fail, ExamplePool panics, with the
// reason, when the package does not call Main or no database is to be had.
func ExamplePool() *pgxpool.Pool {
	if !mainCalled {
		panic("pgtest: the package must call pgtest.Main(m) from its TestMain, which cleans up after the examples")
	}
	setupOnce.Do(func() { srv, srvErr = setup() })
	if srvErr != nil {
		panic(srvErr)
	}
	examplePoolMu.Lock()
	defer examplePoolMu.Unlock()
	if examplePool != nil {
		return examplePool
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	pool, err := pgxpool.New(ctx, srv.dbURL)
	if err != nil {
		panic(fmt.Sprintf("pgtest: %v", err))
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		panic(fmt.Sprintf("pgtest: connecting to %s: %v", srv.dbName, err))
	}
	examplePool = pool
	return pool
}

// closeExamplePool closes the pool of ExamplePool, if one was opened.
func closeExamplePool() {
	examplePoolMu.Lock()
	defer examplePoolMu.Unlock()
	if examplePool != nil {
		examplePool.Close()
		examplePool = nil
	}
}

// ExampleQueueName returns a queue name unique to this call, for a runnable
// example: prefix, with characters other than ASCII letters, digits, '_' and
// '-' replaced by '_', shortened, and a random suffix. It is at most 100
// bytes long.
func ExampleQueueName(prefix string) string {
	suffix := "-" + randomHex(8)
	var b strings.Builder
	for _, r := range prefix {
		if b.Len() >= maxQueueName-len(suffix) {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String() + suffix
}
