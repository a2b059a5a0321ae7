// Command bench measures shadows against pgfloor, the bare-PostgreSQL
// yardstick in ../shared/tools/pgfloor, on the same database in the same run.
//
//	go run ./bench                                  # $DATABASE_URL, else a throwaway cluster
//	go run ./bench -database-url postgres://…       # an existing scratch database
//	go run ./bench -duration 5s -latency-count 100  # a quicker, noisier run
//	go run ./bench -sweep 250,500,1000,2000         # burn at several concurrencies
//	go run ./bench -runs 3                          # every measure three times, then the medians
//
// Measures (see DESIGN.md, "Performance"):
//
//	burn        100,000 tasks added with AddMany, then burned down by one worker
//	            process (a child process: this binary re-executed) with the
//	            default ExecutionTTL; vs pgfloor -mode burn
//	burn_nottl  the same with queue.NoExecutionTTL (records deleted at the end)
//	continuous  a producer goroutine doing AddMany batches of 5,000 while a
//	            worker runs in the same (child) process, tasks worked per
//	            second over -duration; vs pgfloor -mode continuous
//	latency     one q.Add at a time at -latency-rate per second to an idle
//	            worker with the default config (both in a child process),
//	            from Add returning to the handler starting; vs pgfloor
//	            -mode latency (commit → claimed)
//	addmany     the AddMany of the burn, vs pgfloor's COPY rate
//	rss         peak RSS (VmHWM) of the worker process of the burn
//	keys        the burn with random (UUID v4) keys chosen by the caller,
//	            vs the clean burn (whose keys are shadows' time-ordered ones)
//	limits      the burn over 1,000 customers, at most 5 running per
//	            customer (a ConcurrencyLimit), at each -concurrency
//	            candidate, the fastest kept as for the burn; vs pgfloor
//	sql         the worker's claim statement through a backlog
//	            (ClaimDueUnstruck) and its completion statement alone, driven
//	            as pgfloor drives its own (4 connections, 1,000 per claim,
//	            no worker; each connection goes on from the last row it
//	            claimed, as the worker's claim loops do): how much of the gap
//	            to pgfloor is the database's
//	sql_continuous  the same statements while a producer adds AddMany
//	            batches of 5,000 flat out for -duration, as in continuous;
//	            vs pgfloor -mode continuous
//
// Every shadows measure uses a fresh queue name. After each measure the
// queue's rows are deleted and shadows.tasks and shadows.slots are vacuumed
// and analyzed, so one measure does not pay for the dead tuples of another. A burn also runs
// "ANALYZE shadows.tasks" between its AddMany and its worker (-analyze,
// on by default), as autovacuum would soon do for a table at rest: without
// it the planner believes the new queue is empty. The continuous and
// latency measures start on an empty fresh queue and nothing analyzes the
// table while they run. pgfloor creates and drops its own schema.
//
// The pg_stat_user_tables deltas cover the whole table, so anything else
// writing to shadows.tasks in the same database during a burn shows up in
// them; point the bench at a database of its own for clean counts.
//
// Each burn also prints the CPU seconds of the worker process and of the
// local PostgreSQL server (every postgres process, reaped backends
// included, read from /proc), and the transactions the database committed.
// SHADOWS_BENCH_CPUPROFILE=file and SHADOWS_BENCH_MEMPROFILE=file write
// pprof profiles of the worker processes (each child overwrites the file).
//
// Every step has a deadline: a hung worker process is killed, a hung pgfloor
// too, and the run fails with a message saying which step did not finish.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shadows-go/shadows/internal/pgcluster"
	"github.com/shadows-go/shadows/migrations"
)

// Worker Concurrency candidates for the throughput measures (burn,
// continuous). The burn runs at each and the fastest is reported and used
// for burn_nottl and continuous. On the 2-core development machine the
// best value depends on the claim and outcome query plans, which once
// favoured small batches (100). Today larger ones win: on 2026-12-06 five
// alternating pairs of burns gave 41.9–42.3k tasks/s at 2000 against
// 39.8–41.3k at 1000 (database CPU 3.03–3.13 s against 3.25–3.31 s per
// 100k), 23k at 100 and 37k at 4000. All three are tried so the bench keeps
// picking the right one as the queries change.
const defaultConcurrency = "100,1000,2000"

type options struct {
	url           string
	n             int
	runs          int
	duration      time.Duration
	latencyCount  int
	latencyRate   int
	concurrency   []int
	poolConns     int
	phases        map[string]bool
	sweep         []int
	pgfloor       string
	floorKeep     bool
	phaseTimeout  time.Duration
	totalTimeout  time.Duration
	verboseWorker bool
	analyze       bool
}

const allPhases = "burn,burn_nottl,continuous,latency,crowded,strikes,keys,limits,sql,sql_continuous,waiting"

func main() {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	var o options
	var phases, sweep, concurrency string
	flag.StringVar(&o.url, "database-url", os.Getenv("DATABASE_URL"), "PostgreSQL connection string (a scratch database); empty starts a throwaway cluster")
	flag.IntVar(&o.n, "n", 100_000, "tasks per burn (and per AddMany)")
	flag.IntVar(&o.runs, "runs", 1, "run every selected measure this many times, then print the median of each result")
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "length of the continuous measure")
	flag.IntVar(&o.latencyCount, "latency-count", 500, "tasks timed by the latency measure")
	flag.IntVar(&o.latencyRate, "latency-rate", 50, "inserts per second in the latency measure")
	flag.StringVar(&concurrency, "concurrency", defaultConcurrency, "worker Concurrency for burn and continuous; with several comma-separated values the burn runs at each and the fastest is used")
	flag.IntVar(&o.poolConns, "pool-conns", 0, "MaxConns of the worker's pool (0: pgxpool's default, max(4, NumCPU))")
	flag.StringVar(&phases, "phases", allPhases, "comma-separated measures to run: burn (also gives addmany and rss), burn_nottl, continuous, latency, crowded, strikes, keys, limits, sql, sql_continuous, waiting")
	flag.StringVar(&sweep, "sweep", "", "comma-separated concurrencies: only run the shadows burn at each and print its rate")
	flag.StringVar(&o.pgfloor, "pgfloor", os.Getenv("PGFLOOR"), "pgfloor binary, or its source directory (default: ../shared/tools/pgfloor beside the repository root)")
	flag.BoolVar(&o.floorKeep, "pgfloor-keep", true, "also run pgfloor burn -keep (completes by UPDATE, as shadows does with an ExecutionTTL) and print it")
	flag.DurationVar(&o.phaseTimeout, "phase-timeout", 3*time.Minute, "deadline of each step (plus -duration for the continuous one)")
	flag.DurationVar(&o.totalTimeout, "timeout", 20*time.Minute, "deadline of the whole run")
	flag.BoolVar(&o.analyze, "analyze", true, "ANALYZE shadows.tasks after a burn's AddMany, as autovacuum would soon do; false measures a queue the planner's statistics have never seen")
	flag.BoolVar(&o.verboseWorker, "worker-logs", false, "show worker warnings (stderr of the worker processes)")
	flag.Parse()
	if flag.NArg() > 0 {
		fatalf("unexpected arguments %q", flag.Args())
	}
	o.phases = map[string]bool{}
	for p := range strings.SplitSeq(phases, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		if !slices.Contains(strings.Split(allPhases, ","), p) {
			fatalf("-phases: unknown measure %q (known: %s)", p, allPhases)
		}
		o.phases[p] = true
	}
	o.sweep = positiveList("-sweep", sweep)
	o.concurrency = positiveList("-concurrency", concurrency)
	if len(o.concurrency) == 0 {
		fatalf("-concurrency: give at least one value")
	}
	if o.n <= 0 || o.runs <= 0 || o.latencyCount <= 0 || o.latencyRate <= 0 || o.duration <= 0 {
		fatalf("-n, -runs, -latency-count, -latency-rate and -duration must be positive")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.totalTimeout)
	defer cancel()
	err := run(ctx, &o)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("%w (the whole run exceeded -timeout %v)", err, o.totalTimeout)
		}
		fatalf("%v", err)
	}
}

// positiveList parses a comma-separated list of positive numbers.
func positiveList(flagName, list string) []int {
	var out []int
	for s := range strings.SplitSeq(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		c, err := strconv.Atoi(s)
		if err != nil || c <= 0 {
			fatalf("%s: %q is not a positive number", flagName, s)
		}
		out = append(out, c)
	}
	return out
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Printf(format+"\n", args...)
}

func run(ctx context.Context, o *options) error {
	if o.url == "" {
		logf("no -database-url or DATABASE_URL: starting a throwaway cluster")
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		c, err := pgcluster.Start(sctx, pgcluster.Options{})
		cancel()
		if err != nil {
			return fmt.Errorf("start a throwaway cluster: %w", err)
		}
		defer func() {
			if err := c.Stop(); err != nil {
				fmt.Fprintf(os.Stderr, "bench: stop the throwaway cluster: %v\n", err)
			}
		}()
		o.url = c.URL()
		logf("throwaway cluster at %s (fsync, synchronous_commit and full_page_writes off)", o.url)
	}

	floor, cleanupFloor, err := preparePgfloor(ctx, o.pgfloor)
	if err != nil {
		return err
	}
	defer cleanupFloor()

	admin, err := openPool(ctx, o.url, 2)
	if err != nil {
		return err
	}
	defer admin.Close()
	mctx, cancel := context.WithTimeout(ctx, time.Minute)
	err = migrations.Up(mctx, admin)
	cancel()
	if err != nil {
		return fmt.Errorf("apply the shadows schema: %w", err)
	}
	if err := describeServer(ctx, admin); err != nil {
		return err
	}
	logf("go %s GOMAXPROCS=%d NumCPU=%d", runtime.Version(), runtime.GOMAXPROCS(0), runtime.NumCPU())
	logf("between measures: DELETE the measure's queue rows, then VACUUM ANALYZE shadows.tasks and shadows.slots")
	if err := vacuum(ctx, admin); err != nil {
		return err
	}

	b := &bench{o: o, admin: admin, floor: floor}
	if len(o.sweep) > 0 {
		return b.sweep(ctx)
	}
	for i := range o.runs {
		if o.runs > 1 {
			logf("=== run %d of %d", i+1, o.runs)
		}
		b.startRun()
		if err := b.all(ctx); err != nil {
			return err
		}
	}
	b.printMedians()
	return nil
}

func openPool(ctx context.Context, url string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("database URL: %w", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to %s: %w", redact(url), err)
	}
	return pool, nil
}

// redact hides a password in a URL for messages.
func redact(url string) string {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return "(unparsable URL)"
	}
	c := cfg.ConnConfig
	return fmt.Sprintf("%s@%s:%d/%s", c.User, c.Host, c.Port, c.Database)
}

func describeServer(ctx context.Context, pool *pgxpool.Pool) error {
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var version, sb, sc, fsync, mc string
	var rows int64
	err := pool.QueryRow(qctx, `SELECT version(), current_setting('shared_buffers'),
		current_setting('synchronous_commit'), current_setting('fsync'),
		current_setting('max_connections'), (SELECT count(*) FROM shadows.tasks)`).
		Scan(&version, &sb, &sc, &fsync, &mc, &rows)
	if err != nil {
		return fmt.Errorf("describe the server: %w", err)
	}
	if i := strings.Index(version, " on "); i > 0 {
		version = version[:i]
	}
	logf("server: %s shared_buffers=%s synchronous_commit=%s fsync=%s max_connections=%s", version, sb, sc, fsync, mc)
	if rows > 0 {
		logf("note: shadows.tasks already holds %d rows of other queues; they stay, and every measure runs beside them", rows)
	}
	return nil
}

func vacuum(ctx context.Context, pool *pgxpool.Pool) error {
	vctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := pool.Exec(vctx, `VACUUM ANALYZE shadows.tasks`); err != nil {
		return fmt.Errorf("vacuum analyze shadows.tasks: %w", err)
	}
	return nil
}

// cleanup removes a measure's queue and vacuums, on a connection of its own
// that it closes, so that its server process exits and publishes its table
// statistics at once. It runs even when ctx is done, under its own deadline,
// so an interrupted run leaves nothing behind.
func cleanup(ctx context.Context, url, queueName string) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(cctx, url)
	if err != nil {
		return fmt.Errorf("clean up queue %s: %w", queueName, err)
	}
	defer conn.Close(cctx)
	t0 := time.Now()
	tag, err := conn.Exec(cctx, `DELETE FROM shadows.tasks WHERE queue = $1`, queueName)
	if err != nil {
		return fmt.Errorf("clean up queue %s: %w", queueName, err)
	}
	for _, table := range []string{"workers", "strikes", "slots"} {
		if _, err := conn.Exec(cctx, `DELETE FROM shadows.`+table+` WHERE queue = $1`, queueName); err != nil {
			return fmt.Errorf("clean up %s of queue %s: %w", table, queueName, err)
		}
	}
	del := time.Since(t0)
	t0 = time.Now()
	// The slots too: a limits burn leaves a dead slot row per task, and
	// with autovacuum off (as on the development machine) they would slow
	// every later run.
	for _, table := range []string{"tasks", "slots"} {
		if _, err := conn.Exec(cctx, `VACUUM ANALYZE shadows.`+table); err != nil {
			return fmt.Errorf("vacuum analyze shadows.%s: %w", table, err)
		}
	}
	logf("  cleanup: deleted %d rows in %.2fs, VACUUM ANALYZE in %.2fs", tag.RowsAffected(), del.Seconds(), time.Since(t0).Seconds())
	return nil
}

func queueName(measure string) string {
	return fmt.Sprintf("bench-%s-%d", measure, time.Now().UnixNano())
}
