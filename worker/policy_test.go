package worker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

type Tick struct {
	Label string `json:"label" shadows:"logged"`
	Step  int    `json:"step"`
}

func (Tick) TaskName() string { return "tick" }

type Order struct {
	CustomerID string   `json:"customer_id" shadows:"logged"`
	CardNumber string   `json:"card_number"`
	Items      []string `json:"items" shadows:"logged,length"`
}

func (Order) TaskName() string { return "order" }

type NeedsTenant struct {
	Tenant string `json:"tenant" shadows:"required"`
}

func (NeedsTenant) TaskName() string { return "needs_tenant" }

type BadTag struct {
	X int `json:"x" shadows:"loged"`
}

func (BadTag) TaskName() string { return "bad_tag" }

// ledger records when each run of a task started.
type ledger struct {
	mu    sync.Mutex
	runs  []time.Time
	notes []string
}

func (l *ledger) add(note string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.runs = append(l.runs, time.Now())
	l.notes = append(l.notes, note)
	return len(l.runs)
}

func (l *ledger) snapshot() ([]time.Time, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.runs...), append([]string(nil), l.notes...)
}

func TestRetryKeepsTheKeyAndCountsAttempts(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var l ledger
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		l.add(fmt.Sprintf("%d/%d", task.Attempt, task.Attempts))
		if task.Attempt < 3 {
			return errors.New("not yet")
		}
		return nil
	}, worker.Policy{Retry: worker.Retry{Attempts: 3, Delay: 150 * time.Millisecond}})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Count]) error {
		return fmt.Errorf("always fails on attempt %d", task.Attempt)
	}, worker.Policy{Retry: worker.Retry{Attempts: 2}})
	ctx := t.Context()
	_, err := b.q.Add(ctx, Echo{}, &queue.AddOpts{Key: "eventually"})
	require.NoError(t, err)
	_, err = b.q.Add(ctx, Count{}, &queue.AddOpts{Key: "never"})
	require.NoError(t, err)
	w := b.start(t)
	_ = w

	// While a retry waits, the key is live.
	eventually(t, "the first attempt failed", func() bool {
		ex, err := b.q.Execution(ctx, "eventually")
		return err == nil && ex.Attempt == 2
	})
	again, err := b.q.Add(ctx, Echo{}, &queue.AddOpts{Key: "eventually"})
	require.NoError(t, err)
	require.Equal(t, queue.DispositionAlreadyScheduled, again.Disposition)

	ex, err := b.wait(t, "eventually")
	require.NoError(t, err)
	require.Equal(t, 3, ex.Attempt)
	runs, notes := l.snapshot()
	require.Equal(t, []string{"1/3", "2/3", "3/3"}, notes)
	for i := 1; i < len(runs); i++ {
		require.GreaterOrEqual(t, runs[i].Sub(runs[i-1]), 150*time.Millisecond, "retry %d came early", i)
	}

	ex, err = b.wait(t, "never")
	require.Error(t, err)
	require.Equal(t, queue.StateFailed, ex.State)
	require.Equal(t, 2, ex.Attempt)
	require.Equal(t, "always fails on attempt 2", ex.Error)
}

func TestExponentialRetryAndForcedRetry(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var exp, forced ledger
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		if exp.add("") < 4 {
			return errors.New("again")
		}
		return nil
	}, worker.Policy{ExponentialRetry: worker.ExponentialRetry{Attempts: 4, MinDelay: 50 * time.Millisecond, MaxDelay: 120 * time.Millisecond}})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Count]) error {
		if forced.add("") == 1 {
			return worker.RetryAfter(200*time.Millisecond, errors.New("busy"))
		}
		return nil
	}, worker.Policy{Retry: worker.Retry{Attempts: 2, Delay: time.Hour}})
	ctx := t.Context()
	_, err := b.q.Add(ctx, Echo{}, &queue.AddOpts{Key: "exp"})
	require.NoError(t, err)
	_, err = b.q.Add(ctx, Count{}, &queue.AddOpts{Key: "forced"})
	require.NoError(t, err)
	b.runUntilFinished(t)

	runs, _ := exp.snapshot()
	require.Len(t, runs, 4)
	for i, least := range []time.Duration{50, 100, 120} { // 50, 100, then capped
		require.GreaterOrEqual(t, runs[i+1].Sub(runs[i]), least*time.Millisecond, "gap %d", i)
	}
	runs, _ = forced.snapshot()
	require.Len(t, runs, 2)
	gap := runs[1].Sub(runs[0])
	require.GreaterOrEqual(t, gap, 200*time.Millisecond)
	require.Less(t, gap, time.Hour/2, "the requested time wins over the policy's delay")
}

func TestForcedRetryWithoutAttemptsFails(t *testing.T) {
	t.Parallel()
	b := setup(t)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		return worker.RetryAt(time.Now(), errors.New("please retry"))
	}, worker.Policy{})
	_, err := b.q.Add(t.Context(), Echo{}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	b.runUntilFinished(t)
	ex, err := b.wait(t, "k")
	require.Error(t, err)
	require.Equal(t, queue.StateFailed, ex.State)
	require.Equal(t, "please retry", ex.Error)
}

func TestPerpetualTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var l ledger
	var whens []time.Time // due times, as the database set them
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Tick]) error {
		n := l.add(fmt.Sprintf("%s:%d", task.Args.Label, task.Args.Step))
		l.mu.Lock()
		whens = append(whens, task.When)
		l.mu.Unlock()
		require.NotNil(t, task.Perpetual)
		switch n {
		case 2:
			if err := task.Perpetual.Perpetuate(Tick{Label: "changed", Step: task.Args.Step + 1}); err != nil {
				return err
			}
		case 3:
			return errors.New("a failure does not break the chain")
		case 5:
			task.Perpetual.Cancel()
		}
		return nil
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: 100 * time.Millisecond}})
	_, err := b.q.Add(t.Context(), Tick{Label: "start"}, &queue.AddOpts{Key: "chain"})
	require.NoError(t, err)
	b.runUntilFinished(t)

	runs, notes := l.snapshot()
	require.Equal(t, []string{"start:0", "start:0", "changed:1", "changed:1", "changed:1"}, notes)
	// Each run is due Every after the previous one started, so due times
	// are at least Every apart, and no run starts before it is due.
	for i := 1; i < len(whens); i++ {
		require.GreaterOrEqual(t, whens[i].Sub(whens[i-1]), 100*time.Millisecond, "run %d was due early", i)
		require.False(t, runs[i].Before(whens[i].Add(-5*time.Millisecond)), "run %d started before it was due", i)
	}
	ex, err := b.q.Execution(t.Context(), "chain")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State)
}

func TestPerpetualAfterAndAt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var l ledger
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Tick]) error {
		switch l.add("") {
		case 1:
			task.Perpetual.After(200 * time.Millisecond)
		case 2:
			task.Perpetual.At(time.Now().Add(150 * time.Millisecond))
		default:
			task.Perpetual.Cancel()
		}
		return nil
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: time.Hour}})
	_, err := b.q.Add(t.Context(), Tick{}, &queue.AddOpts{Key: "p"})
	require.NoError(t, err)
	b.runUntilFinished(t)
	runs, _ := l.snapshot()
	require.Len(t, runs, 3)
	require.GreaterOrEqual(t, runs[1].Sub(runs[0]), 200*time.Millisecond)
	require.GreaterOrEqual(t, runs[2].Sub(runs[1]), 150*time.Millisecond)
	require.Less(t, runs[2].Sub(runs[0]), 30*time.Minute)
}

func TestReplacedOrCancelledPerpetualStopsItsChain(t *testing.T) {
	t.Parallel()
	b := setup(t)
	started := make(chan string, 10)
	release := make(chan struct{})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Tick]) error {
		started <- task.Args.Label
		switch task.Args.Label {
		case "replace-me":
			<-release
			return nil
		case "cancel-me":
			<-ctx.Done()
			return ctx.Err()
		}
		task.Perpetual.Cancel()
		return nil
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: time.Millisecond}})
	b.cfg.Concurrency = 4
	b.start(t)
	ctx := t.Context()
	_, err := b.q.Add(ctx, Tick{Label: "replace-me"}, &queue.AddOpts{Key: "r"})
	require.NoError(t, err)
	_, err = b.q.Add(ctx, Tick{Label: "cancel-me"}, &queue.AddOpts{Key: "c"})
	require.NoError(t, err)
	got := map[string]bool{<-started: true, <-started: true}
	require.True(t, got["replace-me"] && got["cancel-me"])

	_, err = b.q.Replace(ctx, Tick{Label: "replacement"}, queue.AddOpts{Key: "r", When: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	require.NoError(t, b.q.Cancel(ctx, "c"))
	close(release)

	ex, err := b.wait(t, "c")
	require.ErrorIs(t, err, queue.ErrCancelled)
	require.Equal(t, queue.StateCancelled, ex.State)
	eventually(t, "the replaced run has ended", func() bool {
		var running int
		_ = b.pool.QueryRow(ctx, `SELECT count(*) FROM shadows.tasks WHERE queue = $1 AND state = 'running'`, b.q.Name()).Scan(&running)
		return running == 0
	})
	time.Sleep(100 * time.Millisecond) // the old run's outcome batch
	ex, err = b.q.Execution(ctx, "r")
	require.NoError(t, err)
	require.Equal(t, queue.StateScheduled, ex.State, "the replacement stands; the old run did not reschedule over it")
	require.JSONEq(t, `{"label":"replacement","step":0}`, string(ex.Args))
}

func TestAutomaticPerpetualIsSeededOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var runs atomic.Int64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Tick]) error {
		runs.Add(1)
		return nil
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: time.Hour, Automatic: true}})
	// Three workers start together; each seeds the task under its name.
	for i := range 3 {
		cfg := b.cfg
		cfg.Name = fmt.Sprintf("w%d", i)
		w, err := worker.New(b.pool, b.reg, cfg)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	}
	eventually(t, "the automatic task ran", func() bool { return runs.Load() >= 1 })
	eventually(t, "its next run is scheduled", func() bool {
		ex, err := b.q.Execution(t.Context(), "tick")
		return err == nil && ex.State == queue.StateScheduled
	})
	var rows int
	require.NoError(t, b.pool.QueryRow(t.Context(), `SELECT count(*) FROM shadows.tasks WHERE queue = $1`, b.q.Name()).Scan(&rows))
	require.Equal(t, 1, rows)
	require.EqualValues(t, 1, runs.Load())
}

func TestAutomaticCronWaitsForItsMatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var runs atomic.Int64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Tick]) error {
		runs.Add(1)
		return nil
	}, worker.Policy{Cron: &worker.Cron{Expr: "0 0 1 1 *", Location: time.UTC}})
	b.start(t)
	var ex *queue.Execution
	eventually(t, "the cron task is seeded", func() bool {
		var err error
		ex, err = b.q.Execution(t.Context(), "tick")
		return err == nil
	})
	require.Equal(t, queue.StateScheduled, ex.State)
	now := time.Now().UTC()
	want := time.Date(now.Year()+1, 1, 1, 0, 0, 0, 0, time.UTC)
	require.True(t, want.Equal(ex.When), "next match %v, scheduled %v", want, ex.When)
	require.Zero(t, runs.Load())
}

func TestCronReschedulesAtTheNextMatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var runs atomic.Int64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Tick]) error {
		runs.Add(1)
		return nil
	}, worker.Policy{Cron: &worker.Cron{Expr: "@hourly", Manual: true}})
	_, err := b.q.Add(t.Context(), Tick{}, &queue.AddOpts{Key: "hourly"})
	require.NoError(t, err)
	w := b.start(t)
	_ = w
	eventually(t, "the first run rescheduled", func() bool {
		ex, err := b.q.Execution(t.Context(), "hourly")
		return err == nil && ex.State == queue.StateScheduled && runs.Load() == 1
	})
	ex, err := b.q.Execution(t.Context(), "hourly")
	require.NoError(t, err)
	require.Zero(t, ex.When.Minute())
	require.Zero(t, ex.When.Second())
	require.True(t, ex.When.After(time.Now()))
}

func TestTimeoutRemainingAndExtend(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var remaining time.Duration
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		remaining = task.Timeout.Remaining()
		task.Timeout.Extend(1500 * time.Millisecond)
		select {
		// Past the base limit, well within the extended one even when
		// the handler started late on a loaded machine.
		case <-time.After(1200 * time.Millisecond):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, worker.Policy{Timeout: time.Second})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Count]) error {
		if task.Timeout.Remaining() < time.Hour {
			return errors.New("an unlimited task has a limit")
		}
		return nil
	}, worker.Policy{})
	_, err := b.q.Add(t.Context(), Echo{}, &queue.AddOpts{Key: "extended"})
	require.NoError(t, err)
	_, err = b.q.Add(t.Context(), Count{}, &queue.AddOpts{Key: "unlimited"})
	require.NoError(t, err)
	b.runUntilFinished(t)
	ex, err := b.wait(t, "extended")
	require.NoError(t, err, "%+v", ex)
	require.Greater(t, remaining, 500*time.Millisecond)
	require.LessOrEqual(t, remaining, time.Second)
	_, err = b.wait(t, "unlimited")
	require.NoError(t, err)
}

func TestTimeoutIsRetried(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var attempts atomic.Int64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		if attempts.Add(1) == 1 {
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}, worker.Policy{Timeout: 50 * time.Millisecond, Retry: worker.Retry{Attempts: 2}})
	_, err := b.q.Add(t.Context(), Echo{}, &queue.AddOpts{Key: "k"})
	require.NoError(t, err)
	b.runUntilFinished(t)
	ex, err := b.wait(t, "k")
	require.NoError(t, err)
	require.Equal(t, 2, ex.Attempt)
}

func TestProgressIsVisibleWhileRunning(t *testing.T) {
	t.Parallel()
	b := setup(t)
	reported := make(chan struct{})
	release := make(chan struct{})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		p := task.Progress
		if err := p.SetTotal(ctx, 10); err != nil {
			return err
		}
		for range 3 {
			if err := p.Increment(ctx, 1); err != nil {
				return err
			}
		}
		if err := p.SetMessage(ctx, "three down"); err != nil {
			return err
		}
		require.ErrorIs(t, p.Increment(ctx, 0), worker.ErrInvalidProgress)
		require.ErrorIs(t, p.SetTotal(ctx, 0), worker.ErrInvalidProgress)
		close(reported)
		<-release
		return p.Increment(ctx, 7)
	}, worker.Policy{})
	_, err := b.q.Add(t.Context(), Echo{}, &queue.AddOpts{Key: "p"})
	require.NoError(t, err)
	b.start(t)
	<-reported
	ex, err := b.q.Execution(t.Context(), "p")
	require.NoError(t, err)
	require.Equal(t, queue.StateRunning, ex.State)
	require.Equal(t, queue.Progress{Current: 3, Total: 10, Message: "three down", UpdatedAt: ex.Progress.UpdatedAt}, ex.Progress)
	require.False(t, ex.Progress.UpdatedAt.IsZero())
	close(release)
	ex, err = b.wait(t, "p")
	require.NoError(t, err)
	require.EqualValues(t, 10, ex.Progress.Current)
}

func TestMiddlewareWrapsEveryTask(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var mu sync.Mutex
	var trail []string
	note := func(s string) {
		mu.Lock()
		trail = append(trail, s)
		mu.Unlock()
	}
	b.cfg.Concurrency = 1
	b.cfg.Middleware = []worker.Middleware{
		func(ctx context.Context, info *worker.Info, next func(context.Context) error) error {
			note("outer setup " + info.Key)
			defer note("outer teardown " + info.Key)
			return next(ctx)
		},
		func(ctx context.Context, info *worker.Info, next func(context.Context) error) error {
			if info.Key == "refused" {
				return errors.New("setup failed")
			}
			note("inner setup " + info.Key)
			defer note("inner teardown " + info.Key)
			return next(ctx)
		},
	}
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		info, ok := worker.InfoFrom(ctx)
		require.True(t, ok)
		note("handler " + info.Key)
		return nil
	}, worker.Policy{})
	_, err := b.q.Add(t.Context(), Echo{}, &queue.AddOpts{Key: "ok"})
	require.NoError(t, err)
	b.runUntilFinished(t)
	_, err = b.q.Add(t.Context(), Echo{}, &queue.AddOpts{Key: "refused"})
	require.NoError(t, err)
	b.runUntilFinished(t)
	require.Equal(t, []string{
		"outer setup ok", "inner setup ok", "handler ok", "inner teardown ok", "outer teardown ok",
		"outer setup refused", "outer teardown refused",
	}, trail)
	ex, err := b.wait(t, "refused")
	require.Error(t, err)
	require.Equal(t, "setup failed", ex.Error)
}

func TestBuiltinTasks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	_, err := b.q.Add(ctx, worker.Trace{Message: "milestone"}, &queue.AddOpts{Key: "trace"})
	require.NoError(t, err)
	_, err = b.q.Add(ctx, worker.Fail{Message: "test alert"}, &queue.AddOpts{Key: "fail"})
	require.NoError(t, err)
	_, err = b.q.Add(ctx, worker.Sleep{Seconds: 0.1}, &queue.AddOpts{Key: "sleep"})
	require.NoError(t, err)
	b.runUntilFinished(t)

	_, err = b.wait(t, "trace")
	require.NoError(t, err)
	require.Contains(t, b.logs.String(), `milestone: \"trace\" added to queue`)
	ex, err := b.wait(t, "fail")
	require.Error(t, err)
	require.Equal(t, 2, ex.Attempt, "fail is retried once")
	require.True(t, strings.HasPrefix(ex.Error, "test alert: \"fail\" added to queue"), ex.Error)
	ex, err = b.wait(t, "sleep")
	require.NoError(t, err)
	require.GreaterOrEqual(t, ex.FinishedAt.Sub(ex.StartedAt), 100*time.Millisecond)
}

func TestLogsShowOnlyTaggedArguments(t *testing.T) {
	t.Parallel()
	b := setup(t)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Order]) error {
		task.Logger.Info("charging")
		return nil
	}, worker.Policy{})
	_, err := b.q.Add(t.Context(), Order{CustomerID: "12345", CardNumber: "4111-1111", Items: []string{"a", "b", "c"}}, &queue.AddOpts{Key: "o"})
	require.NoError(t, err)
	b.runUntilFinished(t)
	logs := b.logs.String()
	require.Contains(t, logs, `order(customer_id=\"12345\", card_number=..., items=[len 3])`)
	require.NotContains(t, logs, "4111")
	require.Contains(t, logs, `msg=charging`)
	require.Regexp(t, `msg=charging .*task=order key=o attempt=1`, logs)
	require.Contains(t, logs, "duration=")
	require.Contains(t, logs, "lateness=")
}

func TestInvalidPolicies(t *testing.T) {
	t.Parallel()
	h := func(ctx context.Context, task *worker.Task[Tick]) error { return nil }
	bad := map[string]worker.Policy{
		"two retries":      {Retry: worker.Retry{Attempts: 2}, ExponentialRetry: worker.ExponentialRetry{Attempts: 2}},
		"two perpetuals":   {Perpetual: &worker.Perpetual{Every: time.Second}, Cron: &worker.Cron{Expr: "@daily"}},
		"negative timeout": {Timeout: -time.Second},
		"negative delay":   {Retry: worker.Retry{Attempts: 2, Delay: -time.Second}},
		"negative every":   {Perpetual: &worker.Perpetual{Every: -time.Second}},
		"bad cron":         {Cron: &worker.Cron{Expr: "61 * * * *"}},
		"inverted backoff": {ExponentialRetry: worker.ExponentialRetry{Attempts: 3, MinDelay: time.Minute, MaxDelay: time.Second}},
	}
	for name, p := range bad {
		err := worker.Register(worker.NewRegistry(), h, p)
		require.ErrorIs(t, err, worker.ErrInvalidRegistration, name)
	}
	err := worker.Register(worker.NewRegistry(), func(ctx context.Context, task *worker.Task[NeedsTenant]) error { return nil },
		worker.Policy{Perpetual: &worker.Perpetual{Automatic: true}})
	require.ErrorContains(t, err, "field tenant is required")
	err = worker.Register(worker.NewRegistry(), func(ctx context.Context, task *worker.Task[BadTag]) error { return nil }, worker.Policy{})
	require.ErrorContains(t, err, `unknown shadows tag option "loged"`)
	require.ErrorIs(t, worker.Register(worker.NewRegistry(), h, worker.Policy{Retry: worker.Retry{Attempts: worker.RetryForever}}), nil)
}

func TestRunAtMostSeesAutomaticTasks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var runs atomic.Int64
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Tick]) error {
		runs.Add(1)
		return nil
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: 10 * time.Millisecond, Automatic: true}})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	require.NoError(t, b.worker(t).RunAtMost(ctx, map[string]int{"tick": 3}))
	require.EqualValues(t, 3, runs.Load())
	ex, err := b.q.Execution(t.Context(), "tick")
	require.NoError(t, err)
	require.Equal(t, queue.StateCompleted, ex.State, "the chain ended after its last allowed run")
}
