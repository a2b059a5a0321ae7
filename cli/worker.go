package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

// workerFlags are the worker command's settings.
type workerFlags struct {
	cfg           worker.Config
	untilFinished bool
	logLevel      string
	logFormat     string
	metricsPort   int
	healthPort    int
}

func (a *app) workerCommand() *cobra.Command {
	f := &workerFlags{cfg: a.cfg.Worker}
	// The flags' defaults: the config's values, or the worker's defaults.
	orDefault := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	if f.cfg.Concurrency == 0 {
		f.cfg.Concurrency = worker.DefaultConcurrency
	}
	orDefault(&f.cfg.RedeliveryTimeout, worker.DefaultRedeliveryTimeout)
	orDefault(&f.cfg.ReconnectionDelay, worker.DefaultReconnectionDelay)
	orDefault(&f.cfg.CheckInterval, worker.DefaultCheckInterval)
	orDefault(&f.cfg.SchedulingResolution, worker.DefaultSchedulingResolution)

	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run a worker: claim the queue's tasks and run them",
		Long: `Run a worker on the queue: it claims due tasks and runs them with the
handlers of this program, logging each task as it starts and ends.

With --metrics-port it serves its metrics (and Go's and the process's) for
Prometheus at /metrics; with --healthcheck-port it answers GET / and
/healthz with 200 "ok" while its claim loop runs and it reached the database
within the last two heartbeats, and 503 otherwise. Both listen on every
interface (":PORT"); the same port may serve both.

SIGINT or SIGTERM stops the worker gracefully: it claims nothing more, lets
the running tasks finish and record their outcome, and exits 0. A second
signal stops it at once; its running tasks are then run again by another
worker once their lease (--redelivery-timeout) lapses.

Tasks: ` + strings.Join(a.cfg.Registry.Names(), ", ") + `.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runWorker(cmd, f) },
	}
	fl := cmd.Flags()
	fl.Var(intValue{n: &f.cfg.Concurrency, min: 1}, "concurrency", "how many tasks run at once")
	withEnv(fl, "concurrency", "SHADOWS_WORKER_CONCURRENCY")
	fl.Var(durationValue{d: &f.cfg.RedeliveryTimeout, positive: true}, "redelivery-timeout",
		"lease on a running task: if the worker dies, the task runs again after this")
	withEnv(fl, "redelivery-timeout", "SHADOWS_WORKER_REDELIVERY_TIMEOUT")
	fl.Var(durationValue{d: &f.cfg.ReconnectionDelay, positive: true}, "reconnection-delay",
		"longest pause between attempts while the database cannot be reached")
	withEnv(fl, "reconnection-delay", "SHADOWS_WORKER_RECONNECTION_DELAY")
	fl.Var(durationValue{d: &f.cfg.CheckInterval, positive: true}, "check-interval",
		"how often an idle worker looks for due tasks if no notification arrives")
	withEnv(fl, "check-interval", "SHADOWS_WORKER_CHECK_INTERVAL")
	fl.Var(durationValue{d: &f.cfg.SchedulingResolution, positive: true}, "scheduling-resolution",
		"how late a future task may start, at most, on an idle worker")
	withEnv(fl, "scheduling-resolution", "SHADOWS_WORKER_SCHEDULING_RESOLUTION")
	fl.BoolVar(&f.cfg.NoAutomaticTasks, "no-automatic-tasks", f.cfg.NoAutomaticTasks,
		"do not schedule the automatic perpetual and cron tasks")
	withEnv(fl, "no-automatic-tasks", "SHADOWS_WORKER_NO_AUTOMATIC_TASKS")
	fl.BoolVar(&f.untilFinished, "until-finished", false,
		"exit 0 once the queue has nothing queued, scheduled or running")
	withEnv(fl, "until-finished", "SHADOWS_WORKER_UNTIL_FINISHED")
	fl.StringVar(&f.cfg.Name, "name", f.cfg.Name, "name of the worker in records and logs (default hostname#pid)")
	withEnv(fl, "name", "SHADOWS_WORKER_NAME")
	enumFlag(cmd, &f.logLevel, "log-level", "info", "least severe log level written", "debug", "info", "warn", "error")
	withEnv(fl, "log-level", "SHADOWS_LOG_LEVEL")
	enumFlag(cmd, &f.logFormat, "log-format", "text", "format of the logs on standard error", "text", "json")
	withEnv(fl, "log-format", "SHADOWS_LOG_FORMAT")
	fl.Var(portValue{&f.metricsPort}, "metrics-port",
		"serve Prometheus metrics at http://HOST:PORT/metrics, listening on every interface (0: none)")
	withEnv(fl, "metrics-port", "SHADOWS_WORKER_METRICS_PORT")
	fl.Var(portValue{&f.healthPort}, "healthcheck-port",
		"answer GET / and /healthz on PORT, listening on every interface: 200 while the worker claims tasks and reaches the database, else 503 (0: none)")
	withEnv(fl, "healthcheck-port", "SHADOWS_WORKER_HEALTHCHECK_PORT")
	return cmd
}

// newLogger returns the logger that level and format describe, writing
// to w.
func newLogger(w io.Writer, level, format string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level)) // one of the enum's words
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func (a *app) runWorker(cmd *cobra.Command, f *workerFlags) error {
	ctx := cmd.Context()
	logger := newLogger(cmd.ErrOrStderr(), f.logLevel, f.logFormat)
	cfg := f.cfg
	cfg.Logger = logger
	qc, err := a.queueConfig(cmd, logger, logger)
	if err != nil {
		return err
	}
	cfg.Queue = qc
	if cfg.Name != "" {
		if err := queue.ValidName(cfg.Name); err != nil {
			return usagef("--name %q: %w", clean(cfg.Name), err)
		}
	}

	var metrics http.Handler
	if f.metricsPort > 0 {
		mp, handler, err := newMetrics(ctx, a.cfg.Name)
		if err != nil {
			return err
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
			defer cancel()
			_ = mp.Shutdown(ctx)
		}()
		cfg.Queue.MeterProvider = mp
		metrics = handler
	}

	// A connection for each running task, whose handler may use the
	// database, and a few for claims, outcomes, leases and heartbeats.
	pool, err := a.connect(ctx, "worker", cfg.Concurrency+4)
	if err != nil {
		return err
	}
	defer pool.Close()
	w, err := worker.New(pool, a.cfg.Registry, cfg)
	if err != nil {
		return usagef("%w", err)
	}
	if err := a.checkSchema(ctx, pool); err != nil {
		return err
	}

	ep := &endpoints{logger: logger}
	defer ep.close() // after the worker has stopped
	if err := a.serveEndpoints(ep, f, metrics, w.Healthy); err != nil {
		return err
	}

	logger.Info("worker starting",
		"queue", w.Queue().Name(), "worker", w.Name(), "concurrency", cfg.Concurrency,
		"tasks", a.cfg.Registry.Names(), "until_finished", f.untilFinished)
	stopping := make(chan struct{})
	var announcer sync.WaitGroup
	announcer.Go(func() {
		select {
		case <-ctx.Done():
			logger.Info("stopping: no new tasks; waiting for the running ones to finish (signal again to quit now)")
		case <-stopping:
		}
	})
	defer func() {
		close(stopping)
		announcer.Wait()
	}()
	run := w.Run
	if f.untilFinished {
		run = w.RunUntilFinished
	}
	if err := run(ctx); err != nil {
		if !errors.Is(err, worker.ErrUnfinished) {
			return fmt.Errorf("worker: %w", err)
		}
		// A signal stopped it before the queue finished: a clean stop.
		logger.Info("stopped before the queue finished", "queue", w.Queue().Name())
	}
	logger.Info("worker stopped", "queue", w.Queue().Name(), "worker", w.Name())
	return nil
}

// serveEndpoints starts the servers of --metrics-port and
// --healthcheck-port, one server when both name the same port.
func (a *app) serveEndpoints(ep *endpoints, f *workerFlags, metrics http.Handler, healthy func() bool) error {
	type server struct {
		flag  string
		port  int
		mux   *http.ServeMux
		paths []string
	}
	var servers []*server
	at := func(flag string, port int) *server {
		for _, s := range servers {
			if s.port == port {
				return s
			}
		}
		s := &server{flag: flag, port: port, mux: http.NewServeMux()}
		servers = append(servers, s)
		return s
	}
	if metrics != nil {
		s := at("metrics-port", f.metricsPort)
		s.mux.Handle("GET /metrics", metrics)
		s.paths = append(s.paths, "/metrics")
	}
	if f.healthPort > 0 {
		s := at("healthcheck-port", f.healthPort)
		h := healthHandler(healthy)
		s.mux.Handle("GET /{$}", h)
		s.mux.Handle("GET /healthz", h)
		s.paths = append(s.paths, "/", "/healthz")
	}
	for _, s := range servers {
		if err := ep.serve(s.flag, s.port, s.mux); err != nil {
			return err
		}
		ep.logger.Info("serving HTTP", "port", s.port, "paths", s.paths)
	}
	return nil
}
