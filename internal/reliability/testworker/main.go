// Command testworker is the worker process of the reliability tests. It runs
// one shadows worker on one queue with handlers for the tasks of package
// reliability, every one of which records its runs in the ledger table.
//
//	testworker -database URL -queue NAME -name NAME [-concurrency 8]
//	    [-redelivery 5s] [-mode normal|hang] [-every 200ms] [-max-conns N]
//	    [-log-level warn]
//
// The tasks, all registered in every process:
//
//   - reliability.Job, with no policy;
//   - reliability.LimitedJob, limited to one run at a time per customer_id
//     and three per region (reliability.LimitedPolicy);
//   - reliability.OrderJob, with no policy, for the strike tests;
//   - reliability.PerpetualJob, rescheduled -every after the start of each
//     run (reliability.PerpetualPolicy).
//
// In mode normal a handler records the start of the run, sleeps for the
// task's sleep_ms and records its end. In mode hang it records the start and
// then sleeps for an hour, so that a test can kill the process mid-task.
//
// SIGTERM or SIGINT stops the worker gracefully: it stops claiming, lets the
// running tasks finish and record their outcome, and exits 0.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shadows-go/shadows/internal/reliability"
	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

// hangFor is how long a handler sleeps in mode hang.
const hangFor = time.Hour

// ledgerPatience bounds the retries of one ledger statement while the
// database cannot be reached.
const ledgerPatience = time.Minute

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "testworker:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		dbURL       = flag.String("database", "", "PostgreSQL URL of the migrated database (required)")
		queueName   = flag.String("queue", "", "queue to work (required)")
		name        = flag.String("name", "", "worker name (required)")
		concurrency = flag.Int("concurrency", 8, "tasks run at once")
		redelivery  = flag.Duration("redelivery", 5*time.Second, "redelivery timeout (lease)")
		reconnect   = flag.Duration("reconnection-delay", time.Second, "cap of the back-off while the database is away")
		mode        = flag.String("mode", "normal", "normal: sleep for the task's sleep_ms; hang: sleep for an hour")
		every       = flag.Duration("every", 200*time.Millisecond, "interval of the perpetual task")
		maxConns    = flag.Int("max-conns", 0, "size of the connection pool (default: concurrency + 3)")
		logLevel    = flag.String("log-level", "warn", "debug, info, warn or error")
	)
	flag.Parse()
	if *dbURL == "" || *queueName == "" || *name == "" {
		flag.Usage()
		return errors.New("-database, -queue and -name are required")
	}
	if *mode != "normal" && *mode != "hang" {
		return fmt.Errorf("unknown mode %q", *mode)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("log level: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	pcfg, err := pgxpool.ParseConfig(*dbURL)
	if err != nil {
		return fmt.Errorf("database URL: %w", err)
	}
	// The handlers write to the database too: a connection for each, plus
	// a few for the worker's claims, outcomes, leases and heartbeats.
	pcfg.MaxConns = int32(*concurrency + 3)
	if *maxConns > 0 {
		pcfg.MaxConns = int32(*maxConns)
	}
	// Name the connections after the worker, for pg_stat_activity.
	pcfg.ConnConfig.RuntimeParams["application_name"] = "testworker " + *name
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer pool.Close()

	h := &handler{pool: pool, queue: *queueName, hang: *mode == "hang", logger: logger}
	reg := worker.NewRegistry()
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[reliability.Job]) error {
		return h.run(ctx, &t.Info, t.Args.SleepMS, "", "")
	}, worker.Policy{})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[reliability.LimitedJob]) error {
		return h.run(ctx, &t.Info, t.Args.SleepMS, t.Args.CustomerID, t.Args.Region)
	}, reliability.LimitedPolicy())
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[reliability.OrderJob]) error {
		return h.run(ctx, &t.Info, t.Args.SleepMS, t.Args.CustomerID, "")
	}, worker.Policy{})
	worker.MustRegister(reg, func(ctx context.Context, t *worker.Task[reliability.PerpetualJob]) error {
		return h.run(ctx, &t.Info, t.Args.SleepMS, "", "")
	}, reliability.PerpetualPolicy(*every))
	w, err := worker.New(pool, reg, worker.Config{
		Queue:             queue.Config{Name: *queueName, Logger: logger},
		Name:              *name,
		Concurrency:       *concurrency,
		RedeliveryTimeout: *redelivery,
		ReconnectionDelay: *reconnect,
		Logger:            logger,
	})
	if err != nil {
		return err
	}
	logger.Info("testworker started", "pid", os.Getpid(), "queue", *queueName, "worker", *name, "mode", *mode)
	if err := w.Run(ctx); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	logger.Info("testworker stopped")
	return nil
}

type handler struct {
	pool   *pgxpool.Pool
	queue  string
	hang   bool
	logger *slog.Logger
}

// run is every task's handler: it records the start of the run, sleeps
// sleepMS (or an hour, in mode hang) and records the end.
func (h *handler) run(ctx context.Context, t *worker.Info, sleepMS int, customer, region string) error {
	runID := newRunID()
	err := h.exec(ctx, reliability.LedgerStart, runID, h.queue, t.Key, t.Worker, t.Attempt, t.Redelivered,
		t.Name, t.When, customer, region)
	if err != nil {
		return fmt.Errorf("ledger start: %w", err)
	}
	sleep := time.Duration(sleepMS) * time.Millisecond
	if h.hang {
		sleep = hangFor
	}
	if sleep > 0 {
		timer := time.NewTimer(sleep)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		}
	}
	if err := h.exec(ctx, reliability.LedgerFinish, runID); err != nil {
		return fmt.Errorf("ledger finish: %w", err)
	}
	return nil
}

// exec runs an idempotent ledger statement, retrying while the database
// cannot be reached (the tests kill its connections on purpose).
func (h *handler) exec(ctx context.Context, sql string, args ...any) error {
	deadline := time.Now().Add(ledgerPatience)
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := h.pool.Exec(actx, sql, args...)
		cancel()
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		h.logger.Warn("ledger write failed; retrying", "error", err, "attempt", attempt)
		select {
		case <-time.After(min(time.Duration(attempt)*50*time.Millisecond, 500*time.Millisecond)):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func newRunID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails
	return hex.EncodeToString(b)
}
