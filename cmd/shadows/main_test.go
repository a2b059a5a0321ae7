package main_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

// envBinary passes the path of the built command from the process that
// built it to the one that runs the tests.
const envBinary = "SHADOWS_CMD_TEST_BINARY"

// binary is the shadows command under test.
var binary string

// TestMain builds the command into a temporary directory, runs the tests
// in a child process that uses it, and removes the directory: pgtest.Main
// exits the process, so the directory could not be removed after it.
func TestMain(m *testing.M) {
	if binary = os.Getenv(envBinary); binary != "" {
		pgtest.Main(m)
	}
	os.Exit(buildAndTest())
}

func buildAndTest() int {
	dir, err := os.MkdirTemp("", "shadows-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "shadows")
	args := []string{"build", "-o", bin}
	if raceEnabled() { // then the command is checked for races too
		args = append(args, "-race")
	}
	build := exec.Command(goTool(), append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the shadows command:", err)
		return 1
	}
	tests := exec.Command(os.Args[0], os.Args[1:]...)
	tests.Env = append(os.Environ(), envBinary+"="+bin)
	tests.Stdin, tests.Stdout, tests.Stderr = os.Stdin, os.Stdout, os.Stderr
	err = tests.Run()
	if exit, ok := errors.AsType[*exec.ExitError](err); ok {
		return max(exit.ExitCode(), 1)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "running the tests:", err)
		return 1
	}
	return 0
}

// goTool returns the go command: GOROOT's when that is set, else the one
// on PATH.
func goTool() string {
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); fileExists(p) {
			return p
		}
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return true
		}
	}
	return false
}

// commandEnv is the environment of the command: this process's, without
// the variables the command reads, so that only the tests set them. A
// command built with -race exits without the race detector's default
// pause of a second, which would make up most of the tests' time.
func commandEnv(extra ...string) []string {
	var env []string
	gorace := "atexit_sleep_ms=0"
	for _, kv := range os.Environ() {
		name, value, _ := strings.Cut(kv, "=")
		switch {
		case name == "DATABASE_URL" || strings.HasPrefix(name, "SHADOWS_") || strings.HasPrefix(name, "PG") || strings.HasPrefix(name, "OTEL_"):
			continue
		case name == "GORACE":
			if !strings.Contains(value, "atexit_sleep_ms") {
				value = strings.TrimSpace(value + " " + gorace)
			}
			gorace = value
			continue
		}
		env = append(env, kv)
	}
	return append(append(env, "GORACE="+gorace), extra...)
}

// result is how a run of the command ended.
type result struct {
	code           int
	stdout, stderr string
}

// lines returns the non-empty lines of s.
func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// runTimeout bounds one run of the command in the foreground.
const runTimeout = 30 * time.Second

// run runs the command with args and the extra environment and waits for
// it.
func run(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = commandEnv(env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := result{stdout: stdout.String(), stderr: stderr.String()}
	if exit, ok := errors.AsType[*exec.ExitError](err); ok {
		res.code = exit.ExitCode()
	} else if err != nil {
		t.Fatalf("shadows %s: %v", strings.Join(args, " "), err)
	}
	requireNoCrash(t, res)
	return res
}

// requireNoCrash fails when the command printed a Go stack trace or a
// cobra usage dump for a runtime error.
func requireNoCrash(t *testing.T, r result) {
	t.Helper()
	require.NotContains(t, r.stderr, "goroutine ", "a stack trace")
	require.NotContains(t, r.stderr, "panic:", "a panic")
	require.NotContains(t, r.stderr, "DATA RACE")
	if r.code != 0 {
		require.NotContains(t, r.stderr, "Flags:", "a usage dump")
	}
}

// env is a queue on the package's database, and the way to run the command
// on it.
type env struct {
	t     *testing.T
	url   string
	queue string
	q     *queue.Queue
}

func newEnv(t *testing.T) *env {
	t.Helper()
	q, err := queue.New(pgtest.Pool(t), queue.Config{Name: pgtest.QueueName(t)})
	require.NoError(t, err)
	return &env{t: t, url: pgtest.URL(t), queue: q.Name(), q: q}
}

// run runs the command on the env's database and queue.
func (e *env) run(args ...string) result {
	e.t.Helper()
	return run(e.t, nil, append(args, "--url", e.url, "--queue", e.queue)...)
}

// ok runs the command and requires it to succeed.
func (e *env) ok(args ...string) result {
	e.t.Helper()
	r := e.run(args...)
	require.Equal(e.t, 0, r.code, "shadows %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.stdout, r.stderr)
	return r
}

// state returns the state of the task with key.
func (e *env) state(key string) queue.State {
	e.t.Helper()
	ex, err := e.q.Execution(context.Background(), key)
	require.NoError(e.t, err)
	return ex.State
}

// drain runs a worker until the queue has nothing left to run.
func (e *env) drain() result {
	e.t.Helper()
	return e.ok("worker", "--until-finished", "--check-interval", "50ms", "--no-automatic-tasks")
}

// syncBuffer is a buffer the command writes to while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// process is the command running in the background.
type process struct {
	cmd            *exec.Cmd
	stdout, stderr syncBuffer
	done           chan struct{}
	err            error
}

// start starts the command on the env's database and queue. It is killed
// when the test ends if it is still running.
func (e *env) start(args ...string) *process {
	e.t.Helper()
	p := &process{done: make(chan struct{})}
	p.cmd = exec.Command(binary, append(args, "--url", e.url, "--queue", e.queue)...)
	p.cmd.Env = commandEnv()
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	require.NoError(e.t, p.cmd.Start())
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	e.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait waits for the process to exit and returns how it ended.
func (p *process) wait(t *testing.T, timeout time.Duration) result {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("the command did not exit within %v\nstdout:\n%s\nstderr:\n%s", timeout, p.stdout.String(), p.stderr.String())
	}
	r := result{stdout: p.stdout.String(), stderr: p.stderr.String()}
	if exit, ok := errors.AsType[*exec.ExitError](p.err); ok {
		r.code = exit.ExitCode()
	} else {
		require.NoError(t, p.err)
	}
	requireNoCrash(t, r)
	return r
}

// eventually polls cond every 20ms until it holds, or fails after 15s
// showing what the processes of logs wrote.
func eventually(t *testing.T, what string, cond func() bool, logs ...*syncBuffer) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, l := range logs {
				b.WriteString("\n" + l.String())
			}
			t.Fatalf("timed out waiting until %s%s", what, b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	r := run(t, nil, "--help")
	require.Equal(t, 0, r.code)
	for _, sub := range []string{"worker", "snapshot", "watch", "clear", "strike", "restore", "strikes", "tasks", "workers", "migrate", "version", "completion"} {
		require.Regexp(t, `(?m)^  `+sub+`\s`, r.stdout)
	}
	require.Contains(t, r.stdout, "--url string")
	require.Contains(t, r.stdout, "[$DATABASE_URL]")
	require.Contains(t, r.stdout, "[$SHADOWS_QUEUE]")

	r = run(t, nil, "worker", "--help")
	require.Equal(t, 0, r.code)
	for _, flag := range []string{
		"--concurrency int", "[$SHADOWS_WORKER_CONCURRENCY] (default 10)",
		"--redelivery-timeout duration", "(default 5m)",
		"--reconnection-delay duration", "(default 5s)",
		"--check-interval duration", "(default 250ms)",
		"--scheduling-resolution duration", "(default 10ms)",
		"--no-automatic-tasks", "--until-finished", "--name string",
		"--log-level debug|info|warn|error", "--log-format text|json",
		"--metrics-port port", "[$SHADOWS_WORKER_METRICS_PORT]",
		"--healthcheck-port port", "[$SHADOWS_WORKER_HEALTHCHECK_PORT]",
		"--url string", "--queue string",
	} {
		require.Contains(t, r.stdout, flag)
	}
	require.Contains(t, r.stdout, "Tasks: fail, sleep, trace.")

	// A command without its subcommand shows its help.
	r = run(t, nil, "tasks")
	require.Equal(t, 0, r.code)
	require.Contains(t, r.stdout, "trace")
	require.Regexp(t, `(?m)^  sleep\s+Add a sleep task`, r.stdout)
}

func TestVersionAndCompletion(t *testing.T) {
	t.Parallel()
	r := run(t, nil, "version")
	require.Equal(t, 0, r.code)
	require.Regexp(t, `^shadows \S+\n$`, r.stdout)
	require.Equal(t, r.stdout, run(t, nil, "--version").stdout)

	r = run(t, nil, "completion", "bash")
	require.Equal(t, 0, r.code)
	require.Contains(t, r.stdout, "bash completion")
	r = run(t, nil, "__complete", "worker", "--log-format", "")
	require.Equal(t, 0, r.code)
	require.Equal(t, []string{"text", "json", ":4"}, lines(r.stdout)[:3])
}

func TestBadArguments(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	empty := pgtest.EmptyDatabase(t)
	const unreachable = "postgres://postgres@127.0.0.1:1/shadows?sslmode=disable&connect_timeout=5"
	cases := []struct {
		name   string
		env    []string
		args   []string
		code   int
		stderr string
	}{
		{"unknown command", nil, []string{"wroker"}, 2, `unknown command "wroker" for "shadows" (did you mean "worker"?)`},
		{"unknown subcommand", nil, []string{"tasks", "trase"}, 2, `unknown command "trase" for "shadows tasks" (did you mean "trace"?)`},
		{"unknown flag", nil, []string{"snapshot", "--nope"}, 2, "unknown flag: --nope"},
		{"malformed duration", nil, []string{"worker", "--check-interval", "5q", "--url", url}, 2, `invalid argument "5q" for "--check-interval" flag: "5q" is not a duration`},
		{"zero duration", nil, []string{"worker", "--redelivery-timeout", "0"}, 2, "must be more than zero"},
		{"malformed environment variable", []string{"SHADOWS_WORKER_CONCURRENCY=lots"}, []string{"worker"}, 2, `invalid $SHADOWS_WORKER_CONCURRENCY "lots" for --concurrency: "lots" is not a whole number`},
		{"bad log level", nil, []string{"worker", "--log-level", "loud"}, 2, `"loud" is not one of debug, info, warn, error`},
		{"malformed seconds", nil, []string{"tasks", "sleep", "soon", "--url", url}, 2, `SECONDS: "soon" is not a duration`},
		{"delay and when", nil, []string{"tasks", "trace", "--delay", "1s", "--when", "2030-01-01T00:00:00Z"}, 2, "[delay when] were all set"},
		{"missing key", nil, []string{"watch"}, 2, "accepts 1 arg(s), received 0"},
		{"extra argument", nil, []string{"snapshot", "extra"}, 2, `unknown command "extra" for "shadows snapshot"`},
		{"malformed URL", nil, []string{"snapshot", "--url", "not a url"}, 2, "invalid --url"},
		{"bad queue name", nil, []string{"snapshot", "--url", url, "--queue", "a\x01b"}, 2, "--queue"},
		{"empty queue name", nil, []string{"clear", "--url", url, "--queue", ""}, 2, "--queue is empty"},
		{"negative version", nil, []string{"migrate", "down", "--to", "-1", "--url", url}, 2, "--to -1: a version is 0 or more"},
		{"unreachable database", nil, []string{"snapshot", "--url", unreachable}, 1, "cannot connect to the database: failed to connect to"},
		{"unreachable database, worker", nil, []string{"worker", "--url", unreachable}, 1, "connect: connection refused"},
		{"unreachable database from the environment", []string{"DATABASE_URL=" + unreachable}, []string{"clear"}, 1, "cannot connect to the database"},
		{"unmigrated database", nil, []string{"snapshot", "--url", empty}, 1, `shadows schema is not migrated: `},
		{"unmigrated database, message", nil, []string{"strikes", "--url", empty}, 1, `migrations are not applied: run "shadows migrate up" first`},
		{"unmigrated database, worker", nil, []string{"worker", "--url", empty}, 1, `run "shadows migrate up" first`},
		{"unmigrated database, tasks", nil, []string{"tasks", "trace", "--url", empty}, 1, `run "shadows migrate up" first`},
		{"unknown key", nil, []string{"watch", "no-such-key", "--url", url, "--queue", pgtest.QueueName(t)}, 1, `no task with key "no-such-key"`},
		// strike and restore refuse bad rules before connecting.
		{"strike: unknown operator", nil, []string{"strike", "process_order", "amount", "=~", "int:1", "--url", unreachable}, 2, `OPERATOR "=~" is not one of ==, !=, <, <=, >, >=, between`},
		{"strike: malformed int", nil, []string{"strike", "process_order", "amount", "==", "int:abc", "--url", unreachable}, 2, `VALUE "int:abc": "abc" is not a whole number`},
		{"strike: malformed float", nil, []string{"strike", "process_order", "amount", "<", "float:nan", "--url", unreachable}, 2, `VALUE "float:nan": "nan" is not a finite number`},
		{"strike: malformed bool", nil, []string{"strike", "process_order", "rush", "==", "bool:yes", "--url", unreachable}, 2, `VALUE "bool:yes": "yes" is not true or false`},
		{"strike: malformed JSON", nil, []string{"strike", "process_order", "tags", "==", "json:[1,", "--url", unreachable}, 2, `VALUE "json:[1,": "[1," is not a JSON literal`},
		{"strike: unknown type", nil, []string{"strike", "process_order", "id", "==", "uuid:42", "--url", unreachable}, 2, `VALUE "uuid:42": unknown type "uuid": use int:, float:, bool:, str: or json: (str:uuid:42 for this text)`},
		{"strike: between with one value", nil, []string{"strike", "process_order", "amount", "between", "int:1", "--url", unreachable}, 2, `amount between int:1 lacks HIGH: between takes two values, LOW and HIGH`},
		{"strike: between of mixed types", nil, []string{"strike", "process_order", "amount", "between", "int:1", "z", "--url", unreachable}, 2, `invalid strike rule: between needs two numbers or two strings, got [1,"z"]`},
		{"strike: nothing", nil, []string{"strike", "--url", unreachable}, 2, `give a TASK, a condition PARAMETER OPERATOR VALUE, or both`},
		{"strike: every task", nil, []string{"strike", "*", "*", "--url", unreachable}, 2, `give a TASK, a condition PARAMETER OPERATOR VALUE, or both`},
		{"strike: missing value", nil, []string{"strike", "process_order", "amount", "==", "--url", unreachable}, 2, `amount == lacks its VALUE`},
		{"strike: hold and rule", nil, []string{"strike", "--hold", "--rule", "trace", "--url", unreachable}, 2, `[hold rule] were all set`},
		{"strike: bad queue", nil, []string{"strike", "trace", "--url", unreachable, "--queue", "a\x01b"}, 2, `--queue "a?b": invalid queue config`},
		{"restore: missing operator", nil, []string{"restore", "process_order", "amount", "--url", unreachable}, 2, `"amount" lacks OPERATOR and VALUE`},
		{"restore: no and", nil, []string{"restore", "process_order", "a", "==", "1", "b", "--url", unreachable}, 2, `expected "and" before "b"`},
		{"restore: trailing and", nil, []string{"restore", "process_order", "a", "==", "1", "and", "--url", unreachable}, 2, `nothing follows the last "and"`},
		{"restore: bad rule text", nil, []string{"restore", "--rule", "trace a =~ 1", "--url", unreachable}, 2, `--rule: invalid strike rule: unknown operator "=~"`},
		{"restore: rule and arguments", nil, []string{"restore", "--rule", "trace", "trace", "--url", unreachable}, 2, `give either --rule or arguments, not both`},
		{"strikes: extra argument", nil, []string{"strikes", "trace"}, 2, `unknown command "trace" for "shadows strikes"`},
		{"bad metrics port", nil, []string{"worker", "--metrics-port", "70000"}, 2, `invalid argument "70000" for "--metrics-port" flag: "70000" is not a TCP port`},
		{"bad health port from the environment", []string{"SHADOWS_WORKER_HEALTHCHECK_PORT=http"}, []string{"worker"}, 2, `invalid $SHADOWS_WORKER_HEALTHCHECK_PORT "http" for --healthcheck-port`},
		{"unsupported OTLP protocol", []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL=grpc"}, []string{"clear", "--url", unreachable}, 2, `$OTEL_EXPORTER_OTLP_PROTOCOL "grpc": this command exports traces with http/protobuf only`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := run(t, c.env, c.args...)
			require.Equal(t, c.code, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
			require.Empty(t, r.stdout)
			got := lines(r.stderr)
			require.NotEmpty(t, got)
			require.True(t, strings.HasPrefix(got[0], "shadows: "), got[0])
			require.Contains(t, got[0], c.stderr)
			if c.code == 2 {
				// The error, then where to read how to use the command.
				require.Len(t, got, 2, r.stderr)
				require.Regexp(t, `^Run 'shadows( \S+)* --help' for usage\.$`, got[1])
			} else {
				require.Len(t, got, 1, r.stderr)
			}
		})
	}
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	url := pgtest.EmptyDatabase(t)
	migrate := func(args ...string) result {
		t.Helper()
		r := run(t, nil, append([]string{"migrate"}, append(args, "--url", url)...)...)
		require.Equal(t, 0, r.code, r.stderr)
		return r
	}

	r := migrate("status")
	require.Regexp(t, `(?m)^VERSION\s+MIGRATION\s+STATE$`, r.stdout)
	require.Regexp(t, `(?m)^1\s+00001_tasks\.sql\s+pending$`, r.stdout)
	require.NotContains(t, r.stdout, "applied")
	n := len(lines(r.stdout)) - 1 // migrations

	r = migrate("up")
	require.Regexp(t, `^Applied 00001_tasks\.sql\n`, r.stdout)
	require.Len(t, regexp.MustCompile(`(?m)^Applied `).FindAllString(r.stdout, -1), n)
	require.Contains(t, r.stdout, fmt.Sprintf("the schema is at version %d of %d\n", n, n))
	require.Contains(t, migrate("up").stdout, "Nothing to do")
	require.NotContains(t, migrate("status").stdout, "pending")
	require.Equal(t, 0, run(t, nil, "snapshot", "--url", url).code)

	r = migrate("down")
	require.Regexp(t, `^Rolled back \d+_\w+\.sql\n`, r.stdout)
	require.Contains(t, r.stdout, fmt.Sprintf("version %d of %d", n-1, n))
	r = run(t, nil, "snapshot", "--url", url)
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, fmt.Sprintf("shadows schema is not migrated: 1 of %d migrations are not applied: run \"shadows migrate up\" first", n))

	r = migrate("down", "--to", "0")
	require.Contains(t, r.stdout, "Rolled back 00001_tasks.sql\n")
	require.Contains(t, r.stdout, fmt.Sprintf("version 0 of %d", n))
	r = run(t, nil, "snapshot", "--url", url)
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, fmt.Sprintf("%d of %d migrations are not applied", n, n))
}

func TestTasksRunUntilFinished(t *testing.T) {
	t.Parallel()
	e := newEnv(t)

	r := e.ok("tasks", "trace", "hello from the test", "--key", "t1")
	require.Equal(t, fmt.Sprintf("Added trace task \"t1\" to queue %q\n", e.queue), r.stdout)
	r = e.ok("tasks", "trace", "again", "--key", "t1")
	require.Equal(t, fmt.Sprintf("Task \"t1\" is already queued in queue %q: nothing added\n", e.queue), r.stdout)
	r = e.ok("tasks", "sleep", "0.2")
	key := regexp.MustCompile(`^Added sleep task "([0-9a-f-]{36})" to queue`).FindStringSubmatch(r.stdout)
	require.NotNil(t, key, r.stdout)
	r = e.drain()
	require.Contains(t, r.stderr, "worker starting")
	require.Contains(t, r.stderr, `msg="↪ trace(message=\"hello from the test\")"`)
	require.Contains(t, r.stderr, "hello from the test: ")
	require.Contains(t, r.stderr, `msg="↩ trace(message=\"hello from the test\")"`)
	require.Contains(t, r.stderr, "↩ sleep(seconds=0.2)")
	require.Equal(t, queue.StateCompleted, e.state("t1"))
	require.Equal(t, queue.StateCompleted, e.state(key[1]))

	// A future task: a worker --until-finished would wait for it.
	r = e.ok("tasks", "trace", "later", "--key", "t2", "--delay", "20m")
	require.Regexp(t, `^Added trace task "t2" to queue "[^"]+", due in 20m\n$`, r.stdout)
	require.Equal(t, queue.StateScheduled, e.state("t2"))
	_, err := e.q.Clear(context.Background())
	require.NoError(t, err)

	// The worker's flags read their environment variables; JSON logs.
	_, err = e.q.Add(context.Background(), worker.Trace{Message: "json"}, &queue.AddOpts{Key: "t3"})
	require.NoError(t, err)
	r = run(t, []string{"DATABASE_URL=" + e.url, "SHADOWS_QUEUE=" + e.queue, "SHADOWS_WORKER_NAME=from-env", "SHADOWS_LOG_FORMAT=json", "SHADOWS_WORKER_UNTIL_FINISHED=true"},
		"worker", "--check-interval", "50ms", "--log-level", "info")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stderr, `"worker":"from-env"`)
	require.Contains(t, r.stderr, `"msg":"↩ trace(message=\"json\")"`)
	require.Equal(t, queue.StateCompleted, e.state("t3"))
}

func TestSnapshotAndClear(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.ok("snapshot", "--stats")
	require.Contains(t, r.stdout, fmt.Sprintf("Queue %q as of ", e.queue))
	require.Contains(t, r.stdout, "0 workers, 0/0 running (0 queued, 0 scheduled)\n\nNo tasks.\n")
	require.NotContains(t, r.stdout, "TOTAL")

	e.ok("tasks", "trace", "--key", "future-1", "--delay", "20m")
	e.ok("tasks", "trace", "--key", "future-2", "--when", time.Now().Add(2*time.Hour).Format(time.RFC3339))
	e.ok("tasks", "sleep", "--key", "now-1")

	r = e.ok("snapshot")
	require.Contains(t, r.stdout, "0 workers, 0/3 running (1 queued, 2 scheduled)\n")
	require.Regexp(t, `(?m)^WHEN\s+TASK\s+KEY\s+WORKER\s+STARTED$`, r.stdout)
	require.Regexp(t, `(?m)^\S+ ago\s+sleep\s+now-1$`, r.stdout)
	require.Regexp(t, `(?m)^in (20m|19m\d+s)\s+trace\s+future-1\nat \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [-+]\d{4}\s+trace\s+future-2$`, r.stdout)
	require.NotContains(t, r.stdout, "TOTAL")

	r = e.ok("snapshot", "--stats")
	require.Regexp(t, `(?m)^TASK\s+TOTAL\s+RUNNING\s+QUEUED\s+SCHEDULED\s+EARLIEST\s+LATEST$`, r.stdout)
	require.Regexp(t, `(?m)^trace\s+2\s+0\s+0\s+2\s+in (20m|19m\d+s)\s+at .*$`, r.stdout)
	require.Regexp(t, `(?m)^sleep\s+1\s+0\s+1\s+0\s+\S+ ago\s+\S+ ago$`, r.stdout)

	r = e.ok("clear")
	require.Equal(t, fmt.Sprintf("Cleared 3 tasks from queue %q\n", e.queue), r.stdout)
	require.Contains(t, e.ok("snapshot").stdout, "No tasks.")
	require.Equal(t, queue.StateCancelled, e.state("future-1"))
	require.Equal(t, fmt.Sprintf("Cleared 0 tasks from queue %q\n", e.queue), e.ok("clear").stdout)
}

func TestWatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.ok("tasks", "trace", "--key", "done")
	e.ok("tasks", "fail", "boom", "--key", "failed")
	e.ok("tasks", "sleep", "--key", "cancelled", "--delay", "1h")
	require.NoError(t, e.q.Cancel(context.Background(), "cancelled"))
	e.drain()

	r := e.run("watch", "done")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "Key:      done\nTask:     trace\n")
	require.Contains(t, r.stdout, "State:    completed\n")
	require.Regexp(t, `(?m)^Worker:   \S+#\d+$`, r.stdout)
	require.True(t, strings.HasSuffix(r.stdout, "✓ Task completed\n"), r.stdout)
	require.Empty(t, r.stderr)

	r = e.run("watch", "failed")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stdout, "State:    failed (attempt 2)\n")
	require.Regexp(t, `(?m)^Error:    boom: "failed" added to queue `, r.stdout)
	require.True(t, strings.HasSuffix(r.stdout, "✗ Task failed\n"), r.stdout)
	require.Len(t, lines(r.stderr), 1)
	require.Regexp(t, `^shadows: task "failed" failed: boom: "failed" added to queue `, r.stderr)

	r = e.run("watch", "cancelled")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stdout, "State:    cancelled\n")
	require.Equal(t, "shadows: task \"cancelled\" was cancelled\n", r.stderr)
}

func TestWatchFollowsATask(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.ok("tasks", "sleep", "1.5", "--key", "followed")
	watch := e.start("watch", "followed")
	eventually(t, "watch shows the queued task", func() bool {
		return strings.Contains(watch.stdout.String(), "State:    queued")
	})
	e.drain()
	r := watch.wait(t, 15*time.Second)
	require.Equal(t, 0, r.code, r.stderr)
	require.Regexp(t, `State:    queued, due at [^\n]+\n(.*\n)*State:    running, started at [^\n]+\n(.*\n)*State:    completed\n`, r.stdout)
	require.True(t, strings.HasSuffix(r.stdout, "✓ Task completed\n"), r.stdout)
}

func TestWorkers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	require.Equal(t, fmt.Sprintf("No workers on queue %q\n", e.queue), e.ok("workers", "ls").stdout)

	w := e.start("worker", "--name", "lister", "--no-automatic-tasks")
	eventually(t, "the worker is listed", func() bool {
		return strings.Contains(e.ok("workers", "ls").stdout, "lister")
	})
	r := e.ok("workers", "ls")
	require.Regexp(t, `^NAME\s+LAST SEEN\s+TASKS\nlister\s+(\S+ ago|just now)\s+fail, sleep, trace\n$`, r.stdout)
	require.Regexp(t, `(?m)^lister\s`, e.ok("workers", "for-task", "sleep").stdout)
	require.Equal(t, fmt.Sprintf("No workers on queue %q can run \"nope\"\n", e.queue), e.ok("workers", "for-task", "nope").stdout)
	require.Contains(t, e.ok("snapshot").stdout, "1 worker, 0/0 running")

	// SIGINT stops an idle worker at once, and it signs off.
	require.NoError(t, w.cmd.Process.Signal(os.Interrupt))
	r = w.wait(t, 15*time.Second)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stderr, "worker stopped")
	require.Equal(t, fmt.Sprintf("No workers on queue %q\n", e.queue), e.ok("workers", "ls").stdout)
}

func TestSIGTERMDrains(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	w := e.start("worker", "--name", "drainer", "--check-interval", "50ms", "--no-automatic-tasks")
	// Added here rather than by the command, whose exit may come after the
	// task ran on a loaded machine.
	_, err := e.q.Add(context.Background(), worker.Sleep{Seconds: 2}, &queue.AddOpts{Key: "long"})
	require.NoError(t, err)
	eventually(t, "the task runs", func() bool {
		select {
		case <-w.done:
			t.Fatalf("the worker exited: %v\n%s", w.err, w.stderr.String())
		default:
		}
		return e.state("long") == queue.StateRunning
	}, &w.stderr)

	require.NoError(t, w.cmd.Process.Signal(syscall.SIGTERM))
	r := w.wait(t, 20*time.Second)
	require.Equal(t, 0, r.code, r.stderr)
	stopping := strings.Index(r.stderr, "stopping: no new tasks")
	finished := strings.Index(r.stderr, "↩ sleep(seconds=2)")
	require.True(t, stopping >= 0 && finished > stopping, "the task ends after the signal:\n%s", r.stderr)
	require.Contains(t, r.stderr, "worker stopped")

	ex, err := e.q.Execution(context.Background(), "long")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
	require.Equal(t, "drainer", ex.Worker)
	require.GreaterOrEqual(t, ex.FinishedAt.Sub(ex.StartedAt), 2*time.Second)
}
