package worker_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

type Ping struct {
	Host string `json:"host"`
	N    int    `json:"n"`
}

func (Ping) TaskName() string { return "ping" }

func TestCooldownDropsRunsWithinTheWindow(t *testing.T) {
	t.Parallel()
	// The window is wide because both runs of host a must be admitted
	// within it: on a loaded CI machine a claimed run's admission once
	// came 600ms after its twin's.
	const window = 2 * time.Second
	b := setup(t)
	var l ledger
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Ping]) error {
		l.add(task.Key)
		return nil
	}, worker.Policy{Cooldown: []worker.Cooldown{{Arg: "host", Window: window}}})
	ctx := t.Context()
	for i, host := range []string{"a", "a", "b"} {
		_, err := b.q.Add(ctx, Ping{Host: host}, &queue.AddOpts{Key: fmt.Sprint("early-", i)})
		require.NoError(t, err)
	}
	b.runUntilFinished(t)
	// Of the two runs of host a that start together, one is dropped.
	_, notes := l.snapshot()
	require.Len(t, notes, 2)
	require.Contains(t, notes, "early-2")
	loser := "early-1"
	if notes[0] == "early-1" || notes[1] == "early-1" {
		loser = "early-0"
	}
	ex, err := b.wait(t, loser)
	require.ErrorIs(t, err, queue.ErrCancelled)
	require.Equal(t, "dropped by cooldown host:a", ex.Error)

	_, err = b.q.Add(ctx, Ping{Host: "a"}, &queue.AddOpts{Key: "late", When: time.Now().Add(window + 50*time.Millisecond)})
	require.NoError(t, err)
	b.runUntilFinished(t)
	_, notes = l.snapshot()
	require.Contains(t, notes, "late", "after the window a run goes ahead")
}

func TestDebounceRunsOnceAfterSubmissionsSettle(t *testing.T) {
	t.Parallel()
	// Submissions come 100ms apart; the settle time leaves room for a
	// loaded machine to stall one of them.
	const settle = time.Second
	b := setup(t)
	var l ledger
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Ping]) error {
		l.add(task.Key)
		return nil
	}, worker.Policy{Debounce: &worker.Debounce{Arg: "host", Settle: settle}})
	b.start(t)
	ctx := t.Context()
	var last time.Time
	for i := range 4 {
		last = time.Now()
		_, err := b.q.Add(ctx, Ping{Host: "a", N: i}, &queue.AddOpts{Key: fmt.Sprint("submit-", i)})
		require.NoError(t, err)
		if i == 0 {
			// The winner is the first run to start, not the first added:
			// on a loaded machine a slow first claim could take two
			// submissions in one batch, and either could start first.
			eventually(t, "the first submission started", func() bool {
				return strings.Contains(b.logs.String(), "key=submit-0")
			})
		}
		time.Sleep(100 * time.Millisecond)
	}
	ex, err := b.wait(t, "submit-0")
	require.NoError(t, err, "the first submission is the winner")
	require.Equal(t, queue.StateCompleted, ex.State)
	for i := 1; i < 4; i++ {
		ex, err := b.wait(t, fmt.Sprint("submit-", i))
		require.ErrorIs(t, err, queue.ErrCancelled)
		require.Contains(t, ex.Error, "debounce host:a")
	}
	runs, notes := l.snapshot()
	require.Equal(t, []string{"submit-0"}, notes)
	require.GreaterOrEqual(t, runs[0].Sub(last), settle, "it ran once the submissions had settled")
}

func TestRateLimitDelaysOrDropsTheExcess(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var dropping ledger
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Ping]) error {
		dropping.add(task.Key)
		return nil
	}, worker.Policy{RateLimit: []worker.RateLimit{
		{Arg: "host", Limit: 2, Per: 400 * time.Millisecond},
		{Arg: "host", Limit: 2, Per: time.Hour, Drop: true, Scope: "drops"},
	}})
	ctx := t.Context()
	for i := range 5 {
		_, err := b.q.Add(ctx, Ping{Host: "wait", N: i}, &queue.AddOpts{Key: fmt.Sprint("wait-", i)})
		require.NoError(t, err)
	}
	b.runUntilFinished(t)
	runs, _ := dropping.snapshot()
	require.Len(t, runs, 2, "the hourly rule drops all but two")

	b2 := setup(t)
	var delayed ledger
	worker.MustRegister(b2.reg, func(ctx context.Context, task *worker.Task[Ping]) error {
		delayed.add(task.Key)
		return nil
	}, worker.Policy{RateLimit: []worker.RateLimit{{Arg: "host", Limit: 2, Per: 400 * time.Millisecond}}})
	for i := range 5 {
		_, err := b2.q.Add(ctx, Ping{Host: "h", N: i}, &queue.AddOpts{Key: fmt.Sprint("k-", i)})
		require.NoError(t, err)
	}
	b2.runUntilFinished(t)
	runs, _ = delayed.snapshot()
	require.Len(t, runs, 5, "delayed runs all happen")
	// At most two starts in any 400ms window. The ledger times the handler,
	// which starts a little after its admission (later still on a loaded
	// machine), so a gap may look shorter than the window by that jitter;
	// without the limit every gap would be near zero.
	for i := 2; i < len(runs); i++ {
		require.GreaterOrEqual(t, runs[i].Sub(runs[i-2]), 300*time.Millisecond, "run %d", i)
	}
	for i := range 5 {
		ex, err := b2.wait(t, fmt.Sprint("k-", i))
		require.NoError(t, err)
		require.Equal(t, 1, ex.Attempt, "a delay costs no attempt")
	}
}

func TestInvalidAdmissionRules(t *testing.T) {
	t.Parallel()
	h := func(ctx context.Context, task *worker.Task[Ping]) error { return nil }
	for name, p := range map[string]worker.Policy{
		"negative window": {Cooldown: []worker.Cooldown{{Arg: "host", Window: -time.Second}}},
		"zero settle":     {Debounce: &worker.Debounce{Arg: "host"}},
		"zero limit":      {RateLimit: []worker.RateLimit{{Arg: "host", Per: time.Second}}},
		"negative period": {RateLimit: []worker.RateLimit{{Arg: "host", Limit: 1, Per: -time.Second}}},
		"unknown arg":     {Cooldown: []worker.Cooldown{{Arg: "hostname", Window: time.Second}}},
	} {
		require.ErrorIs(t, worker.Register(worker.NewRegistry(), h, p), worker.ErrInvalidRegistration, name)
	}
}

// A run that a later rule delays leaves no trace of the rules before it:
// with a cooldown per N and a rate limit per host, the runs the rate limit
// delayed once came back to their own cooldown and were dropped.
func TestDelayedRunLeavesNoCooldownBehind(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var runs ledger
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Ping]) error {
		runs.add(task.Key)
		return nil
	}, worker.Policy{
		Cooldown:  []worker.Cooldown{{Arg: "n", Window: time.Hour}},
		RateLimit: []worker.RateLimit{{Arg: "host", Limit: 1, Per: 300 * time.Millisecond}},
	})
	ctx := t.Context()
	for i := range 3 {
		_, err := b.q.Add(ctx, Ping{Host: "a", N: i}, &queue.AddOpts{Key: fmt.Sprint("c-", i)})
		require.NoError(t, err)
	}
	b.runUntilFinished(t)
	got, _ := runs.snapshot()
	require.Len(t, got, 3, "each N runs once, the rate limit only spacing them")
	for i := range 3 {
		ex, err := b.wait(t, fmt.Sprint("c-", i))
		require.NoError(t, err)
		require.Equal(t, queue.StateCompleted, ex.State)
	}
}

// Two rate limits on one argument, a burst and a sustained one, count
// their runs apart: they shared one record, so each run counted twice
// against the burst and the sustained limit never held.
func TestTwoRateLimitsOnOneArgument(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var runs ledger
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Ping]) error {
		runs.add(task.Key)
		return nil
	}, worker.Policy{RateLimit: []worker.RateLimit{
		{Arg: "host", Limit: 2, Per: 200 * time.Millisecond},
		{Arg: "host", Limit: 3, Per: time.Hour, Drop: true},
	}})
	ctx := t.Context()
	for i := range 6 {
		_, err := b.q.Add(ctx, Ping{Host: "h", N: i}, &queue.AddOpts{Key: fmt.Sprint("r-", i)})
		require.NoError(t, err)
	}
	b.runUntilFinished(t)
	got, _ := runs.snapshot()
	require.Len(t, got, 3, "the hourly limit lets three through")
	dropped := 0
	for i := range 6 {
		ex, err := b.q.Execution(ctx, fmt.Sprint("r-", i))
		require.NoError(t, err)
		if ex.State == queue.StateCancelled {
			require.Equal(t, "dropped by rate limit host:h per 1h0m0s", ex.Error)
			dropped++
		}
	}
	require.Equal(t, 3, dropped)
}
