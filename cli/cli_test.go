package cli

import (
	"errors"
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

func TestRequiredVersions(t *testing.T) {
	t.Parallel()
	vs, err := requiredVersions()
	require.NoError(t, err)
	require.NotEmpty(t, vs)
	require.Equal(t, int64(1), vs[0])
}

func TestVersionLine(t *testing.T) {
	t.Parallel()
	require.Regexp(t, `^shadows \S+$`, versionLine(Config{Name: "shadows"}))
	require.Regexp(t, `^myapp 1\.2\.3 \(shadows \S+\)$`, versionLine(Config{Name: "myapp", Version: "1.2.3"}))
}
