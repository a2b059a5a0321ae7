package worker_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sync/atomic"
	"time"
	_ "time/tzdata" // for time.LoadLocation on machines without a zone database

	"github.com/shadows-go/shadows/internal/pgtest"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

type exBackgroundCleanup struct{}

func (exBackgroundCleanup) TaskName() string { return "background_cleanup" }

type exMonitorRollout struct {
	Rollout string `json:"rollout"`
}

func (exMonitorRollout) TaskName() string { return "monitor_rollout" }

type exAdaptiveRateLimiter struct {
	Endpoint          string `json:"endpoint"`
	RequestsPerMinute int    `json:"requests_per_minute"`
}

func (exAdaptiveRateLimiter) TaskName() string { return "adaptive_rate_limiter" }

type exResilientSync struct {
	Source string `json:"source"`
}

func (exResilientSync) TaskName() string { return "resilient_sync" }

type exHourlyReport struct{}

func (exHourlyReport) TaskName() string { return "hourly_report" }

type exWeeklyDigest struct{}

func (exWeeklyDigest) TaskName() string { return "weekly_digest" }

// An Automatic perpetual task needs no Add: every worker that can run it
// adds it under its task name when it starts (and again every
// Config.ReseedInterval should its chain have been broken). The key makes
// that safe: however many workers start, one chain lives. Its arguments are
// the zero value of its type.
func ExamplePerpetual_automatic() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("automatic")})
	if err != nil {
		log.Fatal(err)
	}

	var runs atomic.Int64
	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exBackgroundCleanup]) error {
		n := runs.Add(1)
		deleted := 10 * n // … delete old records …
		fmt.Printf("run %d, key %q: cleaned up %d old records\n", n, t.Key, deleted)
		return nil
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: 10 * time.Millisecond, Automatic: true}})

	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: discard})
	if err != nil {
		log.Fatal(err)
	}
	// RunAtMost ends the chain after two runs, as a test would; Run keeps
	// it going for as long as the worker runs.
	if err := w.RunAtMost(ctx, map[string]int{"background_cleanup": 2}); err != nil {
		log.Fatal(err)
	}
	// Output:
	// run 1, key "background_cleanup": cleaned up 10 old records
	// run 2, key "background_cleanup": cleaned up 20 old records
}

// A perpetual task can end its own chain: here a monitor stops once the
// rollout it watches has finished. Cancel only means "no next run"; the
// current run still completes normally.
func ExamplePerpetualRun_Cancel() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("self-cancel")})
	if err != nil {
		log.Fatal(err)
	}

	// What the deployment system answers at each check.
	answers := []string{"pending", "rolling out", "completed"}
	var checks atomic.Int64
	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exMonitorRollout]) error {
		status := answers[checks.Add(1)-1]
		if status == "completed" || status == "failed" {
			fmt.Printf("rollout %s %s: notifying, and stopping the monitor\n", t.Args.Rollout, status)
			t.Perpetual.Cancel()
			return nil
		}
		fmt.Printf("rollout %s: %s\n", t.Args.Rollout, status)
		return nil
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: 10 * time.Millisecond}})

	_, err = q.Add(ctx, exMonitorRollout{Rollout: "r-7"}, &queue.AddOpts{Key: "monitor-r-7"})
	if err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: discard})
	if err != nil {
		log.Fatal(err)
	}
	// Once the chain has ended, nothing is left to run.
	if err := w.RunUntilFinished(ctx); err != nil {
		log.Fatal(err)
	}
	ex, err := q.Execution(ctx, "monitor-r-7")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ex.Key, ex.State)
	// Output:
	// rollout r-7: pending
	// rollout r-7: rolling out
	// rollout r-7 completed: notifying, and stopping the monitor
	// monitor-r-7 completed
}

// A perpetual task can change what its next run gets (Perpetuate) and when
// it comes (Every, After, At). This rate limiter lowers its rate and looks
// again sooner while the API is loaded, and relaxes when it is not. The
// next run's arguments carry the new rate forward.
func ExamplePerpetualRun_Perpetuate() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("dynamic")})
	if err != nil {
		log.Fatal(err)
	}

	// A "minute", shortened so that the example runs quickly.
	const minute = 20 * time.Millisecond
	loads := []float64{0.5, 0.9, 0.95, 0.3} // the API's load at each check
	var checks atomic.Int64

	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exAdaptiveRateLimiter]) error {
		load := loads[checks.Add(1)-1]
		rate := t.Args.RequestsPerMinute
		if load > 0.8 {
			rate = max(30, rate-10)
			t.Perpetual.Every(minute / 2) // look again sooner
			fmt.Printf("load %.2f: rate %d → %d, next check in half a minute\n", load, t.Args.RequestsPerMinute, rate)
		} else {
			rate = min(120, rate+5)
			t.Perpetual.Every(minute)
			fmt.Printf("load %.2f: rate %d → %d, next check in a minute\n", load, t.Args.RequestsPerMinute, rate)
		}
		// The next run gets the new rate.
		return t.Perpetual.Perpetuate(exAdaptiveRateLimiter{Endpoint: t.Args.Endpoint, RequestsPerMinute: rate})
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: minute}})

	_, err = q.Add(ctx, exAdaptiveRateLimiter{Endpoint: "https://api.example.com", RequestsPerMinute: 60},
		&queue.AddOpts{Key: "rate-limiter"})
	if err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: discard})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunAtMost(ctx, map[string]int{"rate-limiter": 4}); err != nil {
		log.Fatal(err)
	}
	// Output:
	// load 0.50: rate 60 → 65, next check in a minute
	// load 0.90: rate 65 → 55, next check in half a minute
	// load 0.95: rate 55 → 45, next check in half a minute
	// load 0.30: rate 45 → 50, next check in a minute
}

// A perpetual task reschedules itself whether its run succeeded or failed
// (once a Retry policy, if any, has used its attempts), so a failure never
// breaks the chain and the handler needs no recover-and-reschedule code.
func ExamplePerpetual_errorResilient() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("resilient")})
	if err != nil {
		log.Fatal(err)
	}

	var runs atomic.Int64
	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exResilientSync]) error {
		n := runs.Add(1)
		if n == 2 { // … the source is down this time …
			fmt.Printf("sync %d from %s: source unreachable\n", n, t.Args.Source)
			return errors.New("source unreachable")
		}
		fmt.Printf("sync %d from %s: ok\n", n, t.Args.Source)
		return nil
	}, worker.Policy{Perpetual: &worker.Perpetual{Every: 10 * time.Millisecond}})

	_, err = q.Add(ctx, exResilientSync{Source: "crm"}, &queue.AddOpts{Key: "sync-crm"})
	if err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: discard})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.RunAtMost(ctx, map[string]int{"sync-crm": 3}); err != nil {
		log.Fatal(err)
	}
	// Output:
	// sync 1 from crm: ok
	// sync 2 from crm: source unreachable
	// sync 3 from crm: ok
}

// A Cron task runs at the matches of a cron expression. With Manual set it
// is not seeded by workers: it starts when added (here: now) and then
// reschedules itself for each next match, @hourly meaning minute 0 of every
// hour.
func ExampleCron() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("cron")})
	if err != nil {
		log.Fatal(err)
	}

	ran := make(chan struct{}, 1)
	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exHourlyReport]) error {
		fmt.Println("report built") // … build the report …
		ran <- struct{}{}
		return nil
	}, worker.Policy{Cron: &worker.Cron{Expr: "@hourly", Manual: true}})

	if _, err := q.Add(ctx, exHourlyReport{}, &queue.AddOpts{Key: "hourly-report"}); err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: discard})
	if err != nil {
		log.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(runCtx) }()
	defer func() { stop(); <-stopped }()

	<-ran
	// Once the run is recorded, the next one waits for the top of the hour.
	var ex *queue.Execution
	waitUntil(ctx, func() bool {
		ex, err = q.Execution(ctx, "hourly-report")
		return err == nil && ex.State == queue.StateScheduled
	})
	fmt.Println("next run on the hour:", ex.When.Minute() == 0 && ex.When.Second() == 0)
	fmt.Println("next run in the future:", ex.When.After(time.Now()))
	// Output:
	// report built
	// next run on the hour: true
	// next run in the future: true
}

// A Cron task without Manual is automatic: each worker seeds it, under its
// task name, for the next match of its expression in its Location.
func ExampleCron_automatic() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := pgtest.ExamplePool()
	q, err := queue.New(pool, queue.Config{Name: pgtest.ExampleQueueName("cron-automatic")})
	if err != nil {
		log.Fatal(err)
	}

	newYork, err := time.LoadLocation("America/New_York")
	if err != nil {
		log.Fatal(err)
	}
	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[exWeeklyDigest]) error {
		return nil // … send the digest …
	}, worker.Policy{Cron: &worker.Cron{Expr: "0 9 * * MON", Location: newYork}})

	w, err := worker.New(pool, reg, worker.Config{Queue: q.Config(), Logger: discard})
	if err != nil {
		log.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(runCtx) }()
	defer func() { stop(); <-stopped }()

	var ex *queue.Execution
	waitUntil(ctx, func() bool {
		ex, err = q.Execution(ctx, "weekly_digest")
		return err == nil
	})
	fmt.Println(ex.Key, ex.State, "for", ex.When.In(newYork).Format("Monday 15:04"))
	// Output:
	// weekly_digest scheduled for Monday 09:00
}
