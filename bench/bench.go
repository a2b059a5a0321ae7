package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shadows-go/shadows/queue"
)

type bench struct {
	o     *options
	admin *pgxpool.Pool
	floor *floor
	// runs holds each run's summary lines, for the medians of -runs.
	runs [][]string
}

// burnResult is one shadows burn.
type burnResult struct {
	addRate  float64 // AddMany tasks/s
	rate     float64 // burn tasks/s
	rssMB    float64 // worker process peak RSS
	handled  int64
	elapsedS float64
}

func (b *bench) floorTimeout() time.Duration { return b.o.phaseTimeout }

// all runs every selected measure, pgfloor and shadows alternately, and
// ends with the summary lines.
func (b *bench) all(ctx context.Context) error {
	o := b.o
	n := fmt.Sprint(o.n)
	var (
		floorBurn, floorCont, floorLat floorResult
		burn, nottl                    burnResult
		cont                           childResult
		lat                            childResult
		err                            error
	)
	if o.phases["burn"] || o.phases["burn_nottl"] {
		if floorBurn, err = b.floor.run(ctx, o.url, b.floorTimeout(), "-mode", "burn", "-n", n); err != nil {
			return err
		}
		if o.floorKeep {
			if _, err := b.floor.run(ctx, o.url, b.floorTimeout(), "-mode", "burn", "-n", n, "-keep"); err != nil {
				return err
			}
		}
	}
	// The burn at each candidate concurrency; the fastest serves the
	// throughput measures that follow. Without the burn, the largest
	// candidate serves them (it is the fastest on the development machine;
	// the smallest made a limits-only run look four times slower).
	best := slices.Max(o.concurrency)
	if !o.phases["burn"] && len(o.concurrency) > 1 {
		logf("no burn to pick the fastest concurrency: Concurrency=%d (-concurrency chooses)", best)
	}
	if o.phases["burn"] {
		for i, c := range o.concurrency {
			label := "burn"
			if len(o.concurrency) > 1 {
				label = fmt.Sprintf("burn-c%d", c)
			}
			r, err := b.shadowsBurn(ctx, burnScenario{label: label}, c)
			if err != nil {
				return err
			}
			if i == 0 || r.rate > burn.rate {
				burn, best = r, c
			}
		}
		if len(o.concurrency) > 1 {
			logf("fastest burn: Concurrency=%d; burn_nottl and continuous use it", best)
		}
	}
	if o.phases["burn_nottl"] {
		if nottl, err = b.shadowsBurn(ctx, burnScenario{label: "burn_nottl", noTTL: true}, best); err != nil {
			return err
		}
	}
	if o.phases["continuous"] {
		if floorCont, err = b.floor.run(ctx, o.url, o.duration+b.floorTimeout(), "-mode", "continuous", "-duration", o.duration.String()); err != nil {
			return err
		}
		if cont, err = b.shadowsContinuous(ctx, best); err != nil {
			return err
		}
	}
	if o.phases["latency"] {
		timeout := time.Duration(o.latencyCount)*time.Second/time.Duration(o.latencyRate) + b.floorTimeout()
		if floorLat, err = b.floor.run(ctx, o.url, timeout, "-mode", "latency", "-rate", fmt.Sprint(o.latencyRate), "-count", fmt.Sprint(o.latencyCount)); err != nil {
			return err
		}
		if lat, err = b.shadowsLatency(ctx); err != nil {
			return err
		}
	}

	var crowd, strikes, limits, keys burnResult
	var limitsBest int
	if o.phases["crowded"] || o.phases["strikes"] || o.phases["keys"] {
		if burn.rate == 0 {
			if burn, err = b.shadowsBurn(ctx, burnScenario{label: "burn"}, best); err != nil {
				return err
			}
		}
	}
	if o.phases["crowded"] {
		if crowd, err = b.shadowsBurn(ctx, crowded(), best); err != nil {
			return err
		}
	}
	if o.phases["strikes"] {
		if strikes, err = b.shadowsBurn(ctx, strikes100(), best); err != nil {
			return err
		}
	}
	if o.phases["keys"] {
		if keys, err = b.shadowsBurn(ctx, randomKeys(), best); err != nil {
			return err
		}
	}
	if o.phases["limits"] {
		if floorBurn.rate == 0 {
			if floorBurn, err = b.floor.run(ctx, o.url, b.floorTimeout(), "-mode", "burn", "-n", n); err != nil {
				return err
			}
		}
		// Like the burn, at each candidate concurrency, the fastest kept:
		// the best setting differs (here 2000 beat 1000 in four of four
		// alternating pairs of limits burns, while the clean burn often
		// did best at 1000).
		for i, c := range o.concurrency {
			sc := limited()
			if len(o.concurrency) > 1 {
				sc.label = fmt.Sprintf("limits-c%d", c)
			}
			r, err := b.shadowsBurn(ctx, sc, c)
			if err != nil {
				return err
			}
			if i == 0 || r.rate > limits.rate {
				limits, limitsBest = r, c
			}
		}
	}
	var sqlOnly sqlResult
	if o.phases["sql"] {
		if floorBurn.rate == 0 {
			if floorBurn, err = b.floor.run(ctx, o.url, b.floorTimeout(), "-mode", "burn", "-n", n); err != nil {
				return err
			}
		}
		if sqlOnly, err = b.shadowsSQL(ctx); err != nil {
			return err
		}
	}
	var sqlCont sqlResult
	if o.phases["sql_continuous"] {
		if floorCont.rate == 0 {
			if floorCont, err = b.floor.run(ctx, o.url, o.duration+b.floorTimeout(), "-mode", "continuous", "-duration", o.duration.String()); err != nil {
				return err
			}
		}
		if sqlCont, err = b.shadowsSQLContinuous(ctx); err != nil {
			return err
		}
	}
	var waitXact, waitCPU float64
	if o.phases["waiting"] {
		if waitXact, waitCPU, err = b.waiting(ctx, 10*time.Second); err != nil {
			return err
		}
	}

	pool := "pgxpool default MaxConns"
	if o.poolConns > 0 {
		pool = fmt.Sprintf("pool MaxConns=%d", o.poolConns)
	}
	logf("---")
	tried := ""
	if len(o.concurrency) > 1 {
		tried = fmt.Sprintf(" (fastest burn of %v)", o.concurrency)
	}
	logf("settings: burn and continuous: one worker process, Concurrency=%d%s, %s, ExecutionTTL=%v (default; burn_nottl: NoExecutionTTL); "+
		"latency: worker with the default config (Concurrency=10, CheckInterval=250ms); pgfloor defaults (workers=4 batch=1000, completes by DELETE)",
		best, tried, pool, queue.DefaultExecutionTTL)
	analyzed := "ANALYZE after the AddMany, before the worker starts"
	if !o.analyze {
		analyzed = "no ANALYZE after the AddMany (-analyze=false): the planner has never seen the queue"
	}
	logf("statistics: burns: %s; continuous and latency: a fresh queue, no ANALYZE while they run", analyzed)
	if o.phases["burn"] {
		b.summary("burn ratio=%s shadows=%.0f pgfloor=%.0f", ratio(burn.rate, floorBurn.rate), burn.rate, floorBurn.rate)
	}
	if o.phases["continuous"] {
		rate := float64(cont.Handled) / cont.Elapsed
		b.summary("continuous ratio=%s shadows=%.0f pgfloor=%.0f", ratio(rate, floorCont.rate), rate, floorCont.rate)
	}
	if o.phases["latency"] {
		b.summary("latency p50=%.2f p99=%.2f pgfloor_p50=%.2f pgfloor_p99=%.2f",
			percentile(lat.LatMS, 0.5), percentile(lat.LatMS, 0.99), floorLat.p50, floorLat.p99)
	}
	if o.phases["burn"] {
		b.summary("addmany ratio=%s shadows=%.0f pgfloor=%.0f", ratio(burn.addRate, floorBurn.insertRate), burn.addRate, floorBurn.insertRate)
		b.summary("rss shadows=%.1f", burn.rssMB)
	}
	if o.phases["burn_nottl"] {
		b.summary("burn_nottl ratio=%s shadows=%.0f pgfloor=%.0f", ratio(nottl.rate, floorBurn.rate), nottl.rate, floorBurn.rate)
	}
	if o.phases["crowded"] {
		b.summary("crowded ratio=%s shadows=%.0f clean=%.0f", ratio(crowd.rate, burn.rate), crowd.rate, burn.rate)
	}
	if o.phases["strikes"] {
		b.summary("strikes ratio=%s shadows=%.0f clean=%.0f", ratio(strikes.rate, burn.rate), strikes.rate, burn.rate)
	}
	if o.phases["keys"] {
		b.summary("keys ratio=%s shadows=%.0f clean=%.0f", ratio(keys.rate, burn.rate), keys.rate, burn.rate)
	}
	if o.phases["limits"] {
		b.summary("limits ratio=%s shadows=%.0f pgfloor=%.0f concurrency=%d", ratio(limits.rate, floorBurn.rate), limits.rate, floorBurn.rate, limitsBest)
	}
	if o.phases["sql"] {
		b.summary("sql ratio=%s shadows=%.0f pgfloor=%.0f", ratio(sqlOnly.rate, floorBurn.rate), sqlOnly.rate, floorBurn.rate)
	}
	if o.phases["sql_continuous"] {
		b.summary("sql_continuous ratio=%s shadows=%.0f pgfloor=%.0f", ratio(sqlCont.rate, floorCont.rate), sqlCont.rate, floorCont.rate)
	}
	if o.phases["waiting"] {
		b.summary("waiting xact_per_s=%.1f db_cpu_pct=%.1f", waitXact, waitCPU)
	}
	return nil
}

// sweep runs the shadows burn at each concurrency of -sweep, after one
// pgfloor burn for reference.
func (b *bench) sweep(ctx context.Context) error {
	fl, err := b.floor.run(ctx, b.o.url, b.floorTimeout(), "-mode", "burn", "-n", fmt.Sprint(b.o.n))
	if err != nil {
		return err
	}
	var lines []string
	for _, c := range b.o.sweep {
		r, err := b.shadowsBurn(ctx, burnScenario{label: fmt.Sprintf("sweep-%d", c)}, c)
		if err != nil {
			return err
		}
		lines = append(lines, fmt.Sprintf("sweep concurrency=%d ratio=%s shadows=%.0f pgfloor=%.0f rss=%.1f",
			c, ratio(r.rate, fl.rate), r.rate, fl.rate, r.rssMB))
	}
	logf("---")
	for _, l := range lines {
		logf("%s", l)
	}
	return nil
}

// shadowsBurn adds o.n tasks with one AddMany (timed: the addmany measure),
// then has a worker child process burn them down (timed: the burn measure),
// and prints the table statistics of the burn.
func (b *bench) shadowsBurn(ctx context.Context, sc burnScenario, concurrency int) (burnResult, error) {
	var r burnResult
	o := b.o
	label, noTTL := sc.label, sc.noTTL
	name := queueName(label)
	defer func() {
		if err := cleanup(ctx, b.o.url, name); err != nil {
			logf("  %v", err)
		}
	}()
	pctx, cancel := context.WithTimeout(ctx, o.phaseTimeout)
	defer cancel()

	// The producer gets its own pool, closed after the add, so that its
	// server processes exit and flush their table statistics before the
	// "before" reading.
	producer, err := openPool(pctx, o.url, 2)
	if err != nil {
		return r, err
	}
	cfg := queue.Config{Name: name}
	if noTTL {
		cfg.ExecutionTTL = queue.NoExecutionTTL
	}
	q, err := queue.New(producer, cfg)
	if err != nil {
		producer.Close()
		return r, err
	}
	if sc.prepare != nil {
		t0 := time.Now()
		if err := sc.prepare(pctx, q); err != nil {
			producer.Close()
			return r, fmt.Errorf("%s: prepare: %w", label, err)
		}
		logf("  %s: prepared (%s) in %.2fs", label, sc.describe, time.Since(t0).Seconds())
	}
	entries := make([]queue.Entry, o.n)
	for i := range entries {
		entries[i].Args = benchArgs{OrderID: 12345, CustomerID: "c-1"}
		if sc.customers > 0 {
			entries[i].Args = benchArgs{OrderID: 12345, CustomerID: fmt.Sprint("c-", i%sc.customers)}
		}
		if sc.key != nil {
			entries[i].Key = sc.key(i)
		}
	}
	t0 := time.Now()
	_, err = q.AddMany(pctx, entries)
	addDur := time.Since(t0)
	producer.Close()
	if err != nil {
		return r, fmt.Errorf("%s: AddMany of %d tasks: %w", label, o.n, err)
	}
	r.addRate = float64(o.n) / addDur.Seconds()
	logf("shadows addmany (%s): %d tasks in %.2fs = %.0f tasks/s (one transaction, 5000 per statement)", label, o.n, addDur.Seconds(), r.addRate)

	if o.analyze {
		t0 := time.Now()
		if _, err := b.admin.Exec(pctx, `ANALYZE shadows.tasks`); err != nil {
			return r, fmt.Errorf("%s: analyze: %w", label, err)
		}
		logf("  ANALYZE shadows.tasks after the add: %.2fs", time.Since(t0).Seconds())
	}
	before, err := settledStats(pctx, b.admin)
	if err != nil {
		return r, err
	}
	// The worker process has its own deadline (-phase-timeout, enforced by
	// the child itself and, a little later, by killing it).
	dbBefore, dbOK := dbCPUSeconds()
	res, err := runChild(ctx, o.url, childParams{
		Mode: "burn", Queue: name, N: o.n, Concurrency: concurrency, PoolConns: int32(o.poolConns),
		NoTTL: noTTL, Timeout: o.phaseTimeout, Logs: o.verboseWorker, LimitMax: sc.limitMax,
	})
	if err != nil {
		return r, fmt.Errorf("%s: %w", label, err)
	}
	r.rate = float64(res.Handled) / res.Elapsed
	r.rssMB = float64(res.VmHWMKB) / 1024
	r.handled, r.elapsedS = res.Handled, res.Elapsed
	ttl := "ExecutionTTL=15m"
	if noTTL {
		ttl = "NoExecutionTTL"
	}
	logf("shadows %s: %d tasks in %.2fs = %.0f tasks/s (Concurrency=%d %s; last handler at %.2fs, drain %.3fs; worker process peak RSS %.1f MB, heap %.1f MB, %d GCs)",
		label, res.Handled, res.Elapsed, r.rate, concurrency, ttl, res.HandledAt, res.Drain, r.rssMB, float64(res.HeapSys)/(1<<20), res.NumGC)
	if dbAfter, ok := dbCPUSeconds(); ok && dbOK {
		logf("  CPU over the %s: worker process %.2fs, database %.2fs (local server, from /proc)", label, res.CPU, dbAfter-dbBefore)
	}
	after, err := settledStats(pctx, b.admin)
	if err != nil {
		return r, err
	}
	d := after.minus(before)
	hot := 0.0
	if d.upd > 0 {
		hot = 100 * float64(d.hotUpd) / float64(d.upd)
	}
	logf("  pg_stat_user_tables shadows.tasks over the %s: n_tup_ins=%d n_tup_upd=%d n_tup_hot_upd=%d (%.1f%% HOT) n_tup_del=%d n_dead_tup=%+d (autovacuum runs %d, autoanalyze runs %d); %d transactions committed in the database",
		label, d.ins, d.upd, d.hotUpd, hot, d.del, d.dead, d.autovacuum, d.autoanalyze, d.xacts)
	if sizes, err := tableSizes(pctx, b.admin); err == nil {
		logf("  sizes after the %s: %s", label, sizes)
	}
	return r, nil
}

func (b *bench) shadowsContinuous(ctx context.Context, concurrency int) (childResult, error) {
	o := b.o
	name := queueName("continuous")
	defer func() {
		if err := cleanup(ctx, b.o.url, name); err != nil {
			logf("  %v", err)
		}
	}()
	dbBefore, dbOK := dbCPUSeconds()
	res, err := runChild(ctx, o.url, childParams{
		Mode: "continuous", Queue: name, Concurrency: concurrency, PoolConns: int32(o.poolConns),
		Duration: o.duration, Timeout: o.duration + o.phaseTimeout, Logs: o.verboseWorker,
	})
	if err != nil {
		return res, fmt.Errorf("continuous: %w", err)
	}
	logf("shadows continuous: %d tasks worked, %d inserted in %.2fs = %.0f tasks/s (Concurrency=%d, AddMany batches of 5000; drain %.3fs; peak RSS %.1f MB)",
		res.Handled, res.Inserted, res.Elapsed, float64(res.Handled)/res.Elapsed, concurrency, res.Drain, float64(res.VmHWMKB)/1024)
	if dbAfter, ok := dbCPUSeconds(); ok && dbOK {
		logf("  CPU over the whole run (producer included, as pgfloor's): worker process %.2fs, database %.2fs (local server, from /proc)", res.CPU, dbAfter-dbBefore)
	}
	if res.AddErrors > 0 {
		logf("  warning: %d AddMany calls failed (see stderr with -worker-logs)", res.AddErrors)
	}
	return res, nil
}

func (b *bench) shadowsLatency(ctx context.Context) (childResult, error) {
	o := b.o
	name := queueName("latency")
	defer func() {
		if err := cleanup(ctx, b.o.url, name); err != nil {
			logf("  %v", err)
		}
	}()
	res, err := runChild(ctx, o.url, childParams{
		Mode: "latency", Queue: name, N: o.latencyCount, Rate: o.latencyRate,
		Timeout: time.Duration(o.latencyCount)*time.Second/time.Duration(o.latencyRate) + o.phaseTimeout, Logs: o.verboseWorker,
	})
	if err != nil {
		return res, fmt.Errorf("latency: %w", err)
	}
	l := res.LatMS
	logf("shadows latency: %d tasks at %d/s: p50 %.2fms p90 %.2fms p99 %.2fms max %.2fms (Add returned → handler started; default worker config)",
		len(l), o.latencyRate, percentile(l, 0.5), percentile(l, 0.9), percentile(l, 0.99), percentile(l, 1))
	if res.Missing > 0 {
		logf("  warning: %d of %d tasks had not started 5s after the last add", res.Missing, o.latencyCount)
	}
	return res, nil
}

// percentile uses pgfloor's definition: sorted[int(q*(len-1))].
func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	return sorted[int(q*float64(len(sorted)-1))]
}

func ratio(a, b float64) string {
	if b <= 0 {
		return "NaN"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// tableStats are the counters of pg_stat_user_tables for shadows.tasks.
type tableStats struct {
	ins, upd, hotUpd, del, dead, autovacuum, autoanalyze int64
	xacts                                                int64 // commits in the database
}

func (s tableStats) minus(o tableStats) tableStats {
	return tableStats{s.ins - o.ins, s.upd - o.upd, s.hotUpd - o.hotUpd, s.del - o.del, s.dead - o.dead,
		s.autovacuum - o.autovacuum, s.autoanalyze - o.autoanalyze, s.xacts - o.xacts}
}

func readStats(ctx context.Context, pool *pgxpool.Pool) (tableStats, error) {
	var s tableStats
	// Each statement is its own transaction, so each sees fresh statistics.
	err := pool.QueryRow(ctx, `SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, n_dead_tup,
		autovacuum_count, autoanalyze_count,
		(SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())
		FROM pg_stat_user_tables WHERE schemaname = 'shadows' AND relname = 'tasks'`).
		Scan(&s.ins, &s.upd, &s.hotUpd, &s.del, &s.dead, &s.autovacuum, &s.autoanalyze, &s.xacts)
	if err != nil {
		return s, fmt.Errorf("read pg_stat_user_tables: %w", err)
	}
	return s, nil
}

// settledStats waits until the statistics stop moving. Server processes
// publish their counters when they exit, or at most a second after going
// idle, so the counters must hold still for longer than that.
func settledStats(ctx context.Context, pool *pgxpool.Pool) (tableStats, error) {
	prev, err := readStats(ctx, pool)
	if err != nil {
		return prev, err
	}
	still := 0
	for range 15 {
		time.Sleep(400 * time.Millisecond)
		cur, err := readStats(ctx, pool)
		if err != nil {
			return cur, err
		}
		if cur != prev {
			still = 0
			prev = cur
			continue
		}
		if still++; still == 3 {
			break
		}
	}
	return prev, nil
}

func tableSizes(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	rows, err := pool.Query(ctx, `
		SELECT 'heap', pg_relation_size('shadows.tasks'::regclass)
		UNION ALL
		SELECT indexrelname::text, pg_relation_size(indexrelid)
		FROM pg_stat_user_indexes WHERE schemaname = 'shadows' AND relname = 'tasks'`)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var parts []string
	for rows.Next() {
		var name string
		var size int64
		if err := rows.Scan(&name, &size); err != nil {
			return "", err
		}
		parts = append(parts, fmt.Sprintf("%s=%.1fMB", name, float64(size)/(1<<20)))
	}
	return strings.Join(parts, " "), rows.Err()
}
