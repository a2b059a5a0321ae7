package cli

import (
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/queue"
)

func TestParseDuration(t *testing.T) {
	t.Parallel()
	good := map[string]time.Duration{
		"123":      123 * time.Second,
		"1.5":      1500 * time.Millisecond,
		"0":        0,
		"123s":     123 * time.Second,
		"5m":       5 * time.Minute,
		"2h":       2 * time.Hour,
		"1m30s":    90 * time.Second,
		"250ms":    250 * time.Millisecond,
		"01:30":    90 * time.Second,
		"1:02:03":  time.Hour + 2*time.Minute + 3*time.Second,
		"100:00":   100 * time.Minute,
		"0:00.5":   500 * time.Millisecond,
		" 10 ":     10 * time.Second,
		"-5s":      -5 * time.Second, // refused by the flags, not the parser
		"00:00:00": 0,
	}
	for in, want := range good {
		got, err := parseDuration(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "abc", "5q", "1:60", "1:2:3:4", "1:-5", "-1:30", "1e3", "inf", "NaN", "0x10", "1:", ":30", "1::2", "99999999999999999999"} {
		_, err := parseDuration(in)
		require.Error(t, err, in)
		require.Contains(t, err.Error(), "is not a duration", in)
	}
}

func TestDurationFlag(t *testing.T) {
	t.Parallel()
	var d time.Duration
	positive := durationValue{d: &d, positive: true}
	require.NoError(t, positive.Set("1:30"))
	require.Equal(t, "1m30s", positive.String())
	require.ErrorContains(t, positive.Set("0"), "more than zero")
	require.ErrorContains(t, positive.Set("-1s"), "more than zero")

	delay := durationValue{d: &d}
	require.NoError(t, delay.Set("0"))
	require.ErrorContains(t, delay.Set("-1s"), "negative")
}

func TestFormatDuration(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		5 * time.Minute:                      "5m",
		time.Hour:                            "1h",
		90 * time.Minute:                     "1h30m",
		time.Hour + time.Second:              "1h0m1s",
		250 * time.Millisecond:               "250ms",
		5 * time.Second:                      "5s",
		10 * time.Minute:                     "10m",
		10*time.Minute + 10*time.Second:      "10m10s",
		100 * time.Hour:                      "100h",
		0:                                    "0s",
		2*time.Minute + 500*time.Millisecond: "2m0.5s",
	} {
		require.Equal(t, want, formatDuration(d), d.String())
	}
}

func TestOneLine(t *testing.T) {
	t.Parallel()
	require.Equal(t, `unknown command "wroker" for "shadows" (did you mean "worker"?)`,
		oneLine("unknown command \"wroker\" for \"shadows\"\n\nDid you mean this?\n\tworker\n"))
	require.Equal(t, "failed to connect to `x`: a: refused; b: refused",
		oneLine("failed to connect to `x`:\n\ta: refused\n\ta: refused\n\tb: refused"))
	require.Equal(t, "plain", oneLine("plain"))
}

func TestRelative(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	require.Equal(t, "in 5s", relative(now.Add(5*time.Second), now))
	require.Equal(t, "3m20s ago", relative(now.Add(-200*time.Second), now))
	require.Equal(t, "250ms ago", relative(now.Add(-250*time.Millisecond), now))
	require.True(t, strings.HasPrefix(relative(now.Add(time.Hour), now), "at 2025-06-01 "))
	require.Empty(t, relative(time.Time{}, now))
}

func TestProgressBar(t *testing.T) {
	t.Parallel()
	require.Equal(t, "[█████░░░░░]  50% 5/10", progressBar(5, 10, 10))
	require.Equal(t, "[░░░░░░░░░░]   0% 0/10", progressBar(0, 10, 10))
	require.Equal(t, "[██████████] 100% 12/10", progressBar(12, 10, 10))
	require.Equal(t, "7 done", progressBar(7, 0, 10))
}

func TestClean(t *testing.T) {
	t.Parallel()
	require.Equal(t, "a?[31mb?c", clean("a\x1b[31mb\nc"))
	require.Equal(t, "a?[31mb\nc\td", cleanLines("a\x1b[31mb\nc\td"))
}

func TestWatchFields(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ex := &queue.Execution{
		Key: "k", Task: "import", Queue: "q", State: queue.StateRunning, Attempt: 2,
		Worker: "w1", StartedAt: now.Add(-3 * time.Second),
		Progress: queue.Progress{Current: 3, Total: 4, Message: "copying\x1b[2J", UpdatedAt: now},
	}
	fields := map[string]string{}
	for _, f := range watchFields(ex, errors.New("connection\nreset"), true, now) {
		fields[f.label] = f.value
	}
	require.Equal(t, "running, started 3s ago (attempt 2)", fields["State"])
	require.Equal(t, "w1", fields["Worker"])
	require.Contains(t, fields["Progress"], " 75% 3/4")
	require.Equal(t, "copying?[2J", fields["Message"])
	require.Equal(t, "cannot read the task, retrying: connection; reset", fields["Database"])
	require.NotContains(t, fields, "Error")

	ex = &queue.Execution{Key: "k", Task: "t", Queue: "q", State: queue.StateFailed, Error: "boom\n  at line 3"}
	fs := watchFields(ex, nil, false, now)
	require.Equal(t, field{"Error", "boom\n  at line 3"}, fs[len(fs)-1])
	for _, f := range fs {
		require.NotEqual(t, "Progress", f.label, "no progress was reported")
	}
}

func TestLiveLogsChangesOnly(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	l := newLive(&b)
	require.False(t, l.tty)
	l.show([]field{{"Key", "k"}, {"State", "queued"}})
	l.show([]field{{"Key", "k"}, {"State", "queued"}})
	l.show([]field{{"Key", "k"}, {"State", "running"}, {"Worker", "w"}})
	require.Equal(t, "Key:      k\nState:    queued\nState:    running\nWorker:   w\n", b.String())
}

func TestVersionLine(t *testing.T) {
	t.Parallel()
	require.Regexp(t, `^shadows \S+$`, versionLine(Config{Name: "shadows"}))
	require.Regexp(t, `^myapp 1\.2\.3 \(shadows \S+\)$`, versionLine(Config{Name: "myapp", Version: "1.2.3"}))
}

func TestParseValue(t *testing.T) {
	t.Parallel()
	good := map[string]any{
		"int:42":        int64(42),
		"int:-7":        int64(-7),
		"INT: 5":        int64(5),
		"float:3.5":     3.5,
		"float:1e3":     1000.0,
		"bool:true":     true,
		"bool:False":    false,
		"str:int:4":     "int:4",
		"str:":          "",
		"json:null":     json.RawMessage("null"),
		"json:[1, 5]":   json.RawMessage("[1, 5]"),
		"plain":         "plain",
		"12:30":         "12:30",
		"":              "",
		"null":          "null",
		"42":            "42",
		"a b:c":         "a b:c",
		":leading":      ":leading",
		"9lives:x":      "9lives:x",
		"-5":            "-5",
		"json:\"text\"": json.RawMessage(`"text"`),
	}
	for in, want := range good {
		got, err := parseValue(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for in, msg := range map[string]string{
		"int:abc":        `"abc" is not a whole number`,
		"int:1.5":        `"1.5" is not a whole number`,
		"int:":           `"" is not a whole number`,
		"float:inf":      `"inf" is not a finite number`,
		"float:x":        `"x" is not a finite number`,
		"bool:1":         `"1" is not true or false`,
		"json:{":         `"{" is not a JSON literal`,
		"uuid:1":         `unknown type "uuid"`,
		"decimal.Dec:1":  `unknown type "decimal.Dec"`,
		"https://x.test": `unknown type "https"`,
	} {
		_, err := parseValue(in)
		require.ErrorContains(t, err, msg, in)
		require.True(t, isUsage(err), in)
	}
}

func TestParseRule(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		hold bool
		want string
	}{
		{[]string{"process_order"}, false, "process_order"},
		{[]string{"process_order", "*"}, false, "process_order"},
		{[]string{"process_order", ""}, true, "hold process_order"},
		{[]string{"*", "customer_id", "==", "12345"}, false, `* customer_id == "12345"`},
		{[]string{"", "amount", "GE", "float:2.5"}, false, `* amount >= 2.5`},
		{[]string{"t", "a", "between", "int:1", "int:5"}, false, `t a between [1,5]`},
		{[]string{"t", "a", "between", "json:[1,5]", "and", "b", "!=", "and"}, false, `t a between [1,5] and b != "and"`},
		{[]string{"t", "a", "Between", "a", "m"}, false, `t a between ["a","m"]`},
		{[]string{"t", "a", "lt", "int:1", "and", "b", "le", "int:2", "and", "c", "ne", "bool:false"}, false, `t a < 1 and b <= 2 and c != false`},
	} {
		r, err := parseRule(c.args, c.hold)
		require.NoError(t, err, c.args)
		require.Equal(t, c.want, r.String(), c.args)
	}
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{nil, "give a TASK"},
		{[]string{"*"}, "give a TASK"},
		{[]string{"", "*"}, "give a TASK"},
		{[]string{"t", "a"}, `"a" lacks OPERATOR and VALUE`},
		{[]string{"t", "a", "=="}, "a == lacks its VALUE"},
		{[]string{"t", "a", "=", "1"}, `OPERATOR "=" is not one of`},
		{[]string{"t", "a", "between", "int:1"}, "a between int:1 lacks HIGH"},
		{[]string{"t", "a", "between", "int:1", "and", "b", "==", "1"}, "a between int:1 lacks HIGH"},
		{[]string{"t", "a", "between", "json:[1]"}, "between needs two values"},
		{[]string{"t", "a", "==", "1", "or", "b", "==", "2"}, `expected "and" before "or"`},
		{[]string{"t", "a", "==", "1", "and"}, `nothing follows the last "and"`},
		{[]string{"t", "*", "==", "1"}, `PARAMETER "*": a condition needs a parameter's name`},
		{[]string{"t\x01"}, "invalid characters"},
	} {
		_, err := parseRule(c.args, false)
		require.ErrorContains(t, err, c.msg, c.args)
		require.True(t, isUsage(err), c.args)
	}
}

func TestPortFlag(t *testing.T) {
	t.Parallel()
	var n int
	v := portValue{&n}
	require.NoError(t, v.Set("9090"))
	require.Equal(t, "9090", v.String())
	require.NoError(t, v.Set("0"))
	for _, bad := range []string{"-1", "65536", "http", ""} {
		require.ErrorContains(t, v.Set(bad), "is not a TCP port", bad)
	}
}

func TestHealthHandler(t *testing.T) {
	t.Parallel()
	healthy := true
	h := healthHandler(func() bool { return healthy })
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	require.Equal(t, 200, rec.Code)
	require.Equal(t, "ok\n", rec.Body.String())
	require.Equal(t, "text/plain; charset=utf-8", rec.Header().Get("Content-Type"))
	healthy = false
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	require.Equal(t, 503, rec.Code)
}

func TestTracingWanted(t *testing.T) {
	// Not parallel: it sets environment variables.
	for _, c := range []struct {
		env  map[string]string
		want bool
		err  string
	}{
		{map[string]string{}, false, ""},
		{map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, false, ""},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, true, ""},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, true, ""},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "TRUE"}, false, ""},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"}, false, ""},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "zipkin"}, false, `$OTEL_TRACES_EXPORTER "zipkin"`},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, false, `$OTEL_EXPORTER_OTLP_PROTOCOL "grpc"`},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, true, ""},
	} {
		for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"} {
			t.Setenv(k, c.env[k])
		}
		got, err := tracingWanted()
		if c.err != "" {
			require.ErrorContains(t, err, c.err, c.env)
			continue
		}
		require.NoError(t, err, c.env)
		require.Equal(t, c.want, got, c.env)
	}
}
