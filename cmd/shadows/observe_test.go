package main_test

import (
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/queue"
)

// freePort returns a TCP port that nothing listened on a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

// get fetches a page of the command's server, returning the status code
// (0 when nothing answers) and the body.
func get(port, path string) (int, string) {
	resp, err := httpClient.Get("http://127.0.0.1:" + port + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// startWith starts the command on the env's queue and on the database at
// dbURL.
func (e *env) startWith(dbURL string, args ...string) *process {
	e.t.Helper()
	saved := e.url
	e.url = dbURL
	defer func() { e.url = saved }()
	return e.start(args...)
}

func TestWorkerMetricsAndHealth(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mport, hport := freePort(t), freePort(t)
	w := e.start("worker", "--name", "measured", "--no-automatic-tasks", "--check-interval", "50ms",
		"--metrics-port", mport, "--healthcheck-port", hport)
	eventually(t, "the health check answers 200", func() bool {
		code, _ := get(hport, "/")
		return code == http.StatusOK
	}, &w.stderr)
	code, body := get(hport, "/healthz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)
	code, _ = get(hport, "/nope")
	require.Equal(t, http.StatusNotFound, code)

	e.ok("tasks", "trace", "measure me", "--key", "m1")
	e.ok("tasks", "fail", "--key", "m2")
	eventually(t, "the tasks ran", func() bool {
		return e.state("m1") == queue.StateCompleted && e.state("m2") == queue.StateFailed
	}, &w.stderr)

	labels := func(task string) string {
		return `\{[^}]*shadows_queue="` + regexp.QuoteMeta(e.queue) + `"[^}]*shadows_task="` + task + `"[^}]*shadows_worker="measured"[^}]*\}`
	}
	var metrics string
	eventually(t, "the counters are exported", func() bool {
		code, metrics = get(mport, "/metrics")
		return code == http.StatusOK && regexp.MustCompile(`(?m)^shadows_tasks_failed_total`+labels("fail")+` 2$`).MatchString(metrics)
	}, &w.stderr)
	for _, re := range []string{
		`shadows_tasks_started_total` + labels("trace") + ` 1`,
		`shadows_tasks_completed_total` + labels("trace") + ` 1`,
		`shadows_tasks_succeeded_total` + labels("trace") + ` 1`,
		`shadows_tasks_completed_total` + labels("fail") + ` 2`,
		`shadows_tasks_retried_total` + labels("fail") + ` 1`,
		`shadows_tasks_running` + labels("trace") + ` 0`,
		`shadows_task_duration_seconds_count` + labels("trace") + ` 1`,
		`shadows_task_duration_seconds_bucket` + `\{[^}]*le="0\.005"\} \d+`,
		`shadows_task_lateness_seconds_count` + labels("trace") + ` 1`,
		`shadows_queue_depth\{[^}]*shadows_queue="` + regexp.QuoteMeta(e.queue) + `"[^}]*\} 0`,
		`shadows_schedule_depth\{[^}]*\} 0`,
		`target_info\{[^}]*service_name="shadows"[^}]*\} 1`,
		`go_goroutines \d+`,
	} {
		require.Regexp(t, `(?m)^`+re+`$`, metrics)
	}
	require.NotContains(t, metrics, "m1", "never the key")

	// The ports are taken: a second worker on them fails at once.
	r := e.run("worker", "--no-automatic-tasks", "--metrics-port", mport)
	require.Equal(t, 1, r.code)
	require.Regexp(t, `^shadows: --metrics-port: listen tcp :`+mport+`: bind: address already in use\n$`, r.stderr)

	require.NoError(t, w.cmd.Process.Signal(syscall.SIGTERM))
	r = w.wait(t, 15*time.Second)
	require.Equal(t, 0, r.code, r.stderr)
	code, _ = get(mport, "/metrics")
	require.Zero(t, code, "the metrics server stopped")
	code, _ = get(hport, "/")
	require.Zero(t, code, "the health server stopped")
}

func TestMetricsAndHealthOnOnePort(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	port := freePort(t)
	w := e.start("worker", "--no-automatic-tasks", "--metrics-port", port, "--healthcheck-port", port)
	eventually(t, "the health check answers 200", func() bool {
		code, _ := get(port, "/")
		return code == http.StatusOK
	}, &w.stderr)
	code, metrics := get(port, "/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, metrics, "shadows_queue_depth{")
	require.NoError(t, w.cmd.Process.Signal(os.Interrupt))
	require.Equal(t, 0, w.wait(t, 15*time.Second).code)
}

func TestHealthCheckFollowsTheDatabase(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	px, proxied := pgtest.NewProxy(t, e.url)
	u, err := url.Parse(proxied)
	require.NoError(t, err)
	qs := u.Query()
	qs.Set("connect_timeout", "2")
	u.RawQuery = qs.Encode()

	port := freePort(t)
	w := e.startWith(u.String(), "worker", "--no-automatic-tasks", "--check-interval", "50ms",
		"--reconnection-delay", "200ms", "--healthcheck-port", port)
	healthIs := func(want int) func() bool {
		return func() bool {
			code, _ := get(port, "/healthz")
			return code == want
		}
	}
	eventually(t, "the worker is healthy", healthIs(http.StatusOK), &w.stderr)

	px.Cut(true)
	cut := time.Now()
	eventually(t, "the worker is unhealthy without its database", healthIs(http.StatusServiceUnavailable), &w.stderr)
	t.Logf("503 after %v", time.Since(cut).Round(time.Millisecond))
	code, body := get(port, "/")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.True(t, strings.HasPrefix(body, "unhealthy"), body)

	px.Cut(false)
	eventually(t, "the worker is healthy again", healthIs(http.StatusOK), &w.stderr)
	e.ok("tasks", "trace", "--key", "after-outage")
	eventually(t, "the worker runs tasks again", func() bool { return e.state("after-outage") == queue.StateCompleted }, &w.stderr)

	require.NoError(t, w.cmd.Process.Signal(syscall.SIGTERM))
	r := w.wait(t, 15*time.Second)
	require.Equal(t, 0, r.code, r.stderr)
}

// collector is an OTLP/HTTP trace receiver.
type collector struct {
	*httptest.Server
	mu    sync.Mutex
	spans []*tracepb.Span
	attrs []map[string]string // the resource attributes of each span
}

func newCollector(t *testing.T) *collector {
	c := &collector{}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/traces" {
			http.NotFound(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		var req coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(body, &req)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		for _, rs := range req.ResourceSpans {
			res := map[string]string{}
			for _, kv := range rs.GetResource().GetAttributes() {
				res[kv.Key] = kv.GetValue().GetStringValue()
			}
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					c.spans = append(c.spans, s)
					c.attrs = append(c.attrs, res)
				}
			}
		}
		c.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(c.Close)
	return c
}

// span returns the span named name that has the attribute key=value, and
// its resource's attributes.
func (c *collector) span(t *testing.T, name, key, value string) (*tracepb.Span, map[string]string) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, s := range c.spans {
		if s.Name != name {
			continue
		}
		for _, kv := range s.Attributes {
			if kv.Key == key && kv.GetValue().GetStringValue() == value {
				return s, c.attrs[i]
			}
		}
	}
	var names []string
	for _, s := range c.spans {
		names = append(names, s.Name)
	}
	t.Fatalf("no span %s with %s=%s among %v", name, key, value, names)
	return nil, nil
}

func TestTracesToOTLP(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := newCollector(t)
	otel := []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + c.URL, "OTEL_RESOURCE_ATTRIBUTES=deployment.environment=test"}
	runOTel := func(args ...string) result {
		t.Helper()
		r := run(t, otel, append(args, "--url", e.url, "--queue", e.queue)...)
		require.Equal(t, 0, r.code, r.stderr)
		return r
	}
	runOTel("tasks", "trace", "traced", "--key", "traced")
	add, res := c.span(t, "shadows.add", "shadows.key", "traced")
	require.Equal(t, tracepb.Span_SPAN_KIND_PRODUCER, add.Kind)
	require.Equal(t, "shadows", res["service.name"])
	require.Equal(t, "test", res["deployment.environment"])

	runOTel("worker", "--until-finished", "--no-automatic-tasks", "--check-interval", "50ms")
	ran, _ := c.span(t, "trace", "shadows.queue", e.queue)
	require.Equal(t, tracepb.Span_SPAN_KIND_CONSUMER, ran.Kind)
	require.Len(t, ran.Links, 1)
	require.Equal(t, hex.EncodeToString(add.TraceId), hex.EncodeToString(ran.Links[0].TraceId), "the run links to the add")
	require.Equal(t, hex.EncodeToString(add.SpanId), hex.EncodeToString(ran.Links[0].SpanId))
	require.NotEqual(t, hex.EncodeToString(add.TraceId), hex.EncodeToString(ran.TraceId), "the run starts a trace of its own")

	runOTel("strike", "trace")
	runOTel("restore", "trace")
	c.span(t, "shadows.strike", "shadows.rule", "trace")
	c.span(t, "shadows.restore", "shadows.rule", "trace")

	// An unreachable collector costs a warning, not the command.
	r := run(t, []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:" + freePort(t)},
		"tasks", "trace", "--key", "untraced", "--url", e.url, "--queue", e.queue)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, `Added trace task "untraced"`)
	require.Contains(t, r.stderr, "connection refused")
	for _, l := range lines(r.stderr) {
		require.True(t, strings.HasPrefix(l, "shadows: warning: "), r.stderr)
	}
}
