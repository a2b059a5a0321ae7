// Command s3proto measures the schema a redesign of shadows.tasks would
// adopt ("S3"): each task's run state in a narrow row keyed by a bigint id
// (s3.runs, the only table claims and outcomes update), beside a payload
// table keyed the same way that runs never update (s3.payload: key, task,
// arguments). It drives the two tables the way the bench's sql and
// sql_continuous measures drive shadows.tasks: four connections, each
// claiming 1,000 rows (going on from the last row it claimed) and recording
// them at once; with -mode continuous a producer adds batches of 5,000 (two
// COPYs in one transaction) flat out for -duration.
//
// SCOPE.md beside this file lists what in shadows reads and writes
// shadows.tasks, for a redesign that adopts these tables.
//
// It is a measuring tool for the redesign, not part of shadows: no worker,
// no strikes, limits or keys rules. Point it at a scratch database; it
// creates and drops the schema s3. By default its connections plan every
// statement for its parameters (plan_cache_mode=force_custom_plan): on a
// fresh, still small table the generic plan of the claim turned the update
// by ctid into a sequential scan (2,300 tasks/s). Compare it with the
// bench's sql measures run with the same option in the URL.
//
//	go run ./bench/s3proto -url postgres://…/scratch -mode continuous
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

const schema = `
DROP SCHEMA IF EXISTS s3 CASCADE;
CREATE SCHEMA s3;
CREATE SEQUENCE s3.block;
CREATE TABLE s3.payload (id bigint PRIMARY KEY, queue text COLLATE "C" NOT NULL, key text COLLATE "C" NOT NULL,
  task text COLLATE "C" NOT NULL, args jsonb NOT NULL, trace_context jsonb, created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (queue, key));
CREATE TABLE s3.runs (id bigint PRIMARY KEY, queue text COLLATE "C" NOT NULL, state smallint NOT NULL DEFAULT 0,
  run_at timestamptz NOT NULL DEFAULT now(), seq bigint NOT NULL, generation bigint NOT NULL DEFAULT 1,
  attempt int NOT NULL DEFAULT 1, deliveries int NOT NULL DEFAULT 0, worker text, started_at timestamptz,
  lease_expires_at timestamptz, finished_at timestamptz, expires_at timestamptz, error text, result jsonb,
  cancel_requested bool NOT NULL DEFAULT false, held bool NOT NULL DEFAULT false, strike_epoch bigint NOT NULL DEFAULT 0,
  waiting_on text);
CREATE INDEX runs_claimable ON s3.runs (queue, run_at, seq) WHERE state = 0 AND NOT held AND waiting_on IS NULL;
CREATE INDEX runs_lease ON s3.runs (queue, lease_expires_at) WHERE state = 1;
CREATE INDEX runs_expiry ON s3.runs (expires_at) WHERE expires_at IS NOT NULL;
`

const claimSQL = `
WITH c AS (
  UPDATE s3.runs r SET state = 1, worker = $1::text, started_at = now(), deliveries = r.deliveries + 1,
      lease_expires_at = now() + make_interval(secs => $2::float8)
  WHERE r.ctid = ANY (ARRAY(
      SELECT d.ctid FROM s3.runs d
      WHERE d.queue = $3::text AND d.state = 0 AND NOT d.held AND d.waiting_on IS NULL AND d.run_at <= now()
        AND (d.run_at, d.seq) > (coalesce($4::timestamptz, '-infinity'::timestamptz), coalesce($5::bigint, 0))
      ORDER BY d.run_at, d.seq LIMIT $6 FOR UPDATE SKIP LOCKED))
  RETURNING r.id, r.generation, r.attempt, r.run_at, r.seq, r.deliveries, r.started_at)
SELECT c.id, c.generation, c.attempt, c.run_at, c.seq, c.deliveries, c.started_at,
       p.key, p.task, convert_to(p.args::text, 'UTF8'), p.trace_context
FROM c CROSS JOIN LATERAL (SELECT key, task, args, trace_context FROM s3.payload p WHERE p.id = c.id LIMIT 1) p`

const completeSQL = `
WITH ended AS (
    SELECT unnest($1::bigint[]) AS id, unnest($2::bigint[]) AS generation,
           unnest($3::int[]) AS deliveries, unnest($4::timestamptz[]) AS started_at
), target AS (
    SELECT t.tid FROM ended JOIN LATERAL (
        SELECT r.ctid::tid AS tid, r.generation, r.deliveries, r.started_at, r.state
        FROM s3.runs r WHERE r.id = ended.id LIMIT 1 FOR UPDATE) AS t ON true
    WHERE t.generation = ended.generation AND t.deliveries = ended.deliveries
      AND t.started_at = ended.started_at AND t.state = 1
), updated AS (
    UPDATE s3.runs t SET state = 2, finished_at = now(), lease_expires_at = NULL,
        expires_at = now() + make_interval(secs => $5::float8), error = NULL, result = NULL
    WHERE t.ctid = ANY (ARRAY(SELECT tid FROM target))
    RETURNING 1
)
SELECT (SELECT count(*) FROM updated)::bigint, (SELECT true FROM pg_notify('shadows_done', $6::text))`

type claimed struct {
	id, gen, seq     int64
	attempt, deliv   int32
	runAt, startedAt time.Time
	key, task        string
	args             []byte
	trace            []byte
}

func addBatch(ctx context.Context, pool *pgxpool.Pool, queue string, n int) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	var block int64
	var now time.Time
	if err := tx.QueryRow(ctx, `SELECT nextval('s3.block'), now()`).Scan(&block, &now); err != nil {
		return err
	}
	pay := make([][]any, n)
	runs := make([][]any, n)
	for i := range n {
		id := block*100000 + int64(i)
		k, _ := uuid.NewV7()
		pay[i] = []any{id, queue, k.String(), "bench", []byte(`{"order_id":12345,"customer_id":"c-1"}`), nil}
		runs[i] = []any{id, queue, now, id, int64(0)}
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"s3", "payload"}, []string{"id", "queue", "key", "task", "args", "trace_context"}, pgx.CopyFromRows(pay)); err != nil {
		return err
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"s3", "runs"}, []string{"id", "queue", "run_at", "seq", "strike_epoch"}, pgx.CopyFromRows(runs)); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify('shadows_ready', $1)`, queue); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

func main() {
	url := flag.String("url", os.Getenv("DATABASE_URL"), "PostgreSQL connection string of a scratch database")
	mode := flag.String("mode", "burn", "burn (add -n tasks, then claim and record them), continuous, or fill (only add -n tasks, and keep them)")
	n := flag.Int("n", 100000, "tasks of a burn")
	dur := flag.Duration("duration", 20*time.Second, "length of a continuous run")
	custom := flag.Bool("custom-plans", true, "plan every statement for its parameters (plan_cache_mode=force_custom_plan)")
	flag.Parse()
	if *mode != "burn" && *mode != "continuous" && *mode != "fill" {
		check(fmt.Errorf("unknown -mode %q", *mode))
	}
	ctx := context.Background()
	if *custom {
		sep := "?"
		if strings.Contains(*url, "?") {
			sep = "&"
		}
		*url += sep + "options=-c%20plan_cache_mode%3Dforce_custom_plan"
	}
	admin, err := pgxpool.New(ctx, *url)
	check(err)
	_, err = admin.Exec(ctx, schema)
	check(err)
	cfg, _ := pgxpool.ParseConfig(*url)
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	check(err)
	const queue = "s3q"
	if *mode == "fill" { // adds -n tasks and leaves them (and the schema) for EXPLAIN
		for i := 0; i < *n; i += 5000 {
			check(addBatch(ctx, admin, queue, 5000))
		}
		return
	}
	if *mode == "burn" {
		for i := 0; i < *n; i += 5000 {
			check(addBatch(ctx, admin, queue, 5000))
		}
		_, err = admin.Exec(ctx, `ANALYZE s3.runs; ANALYZE s3.payload`)
		check(err)
	}
	wctx, stop := context.WithCancel(ctx)
	var done, inserted atomic.Int64
	var wg sync.WaitGroup
	if *mode == "continuous" {
		wg.Go(func() {
			for wctx.Err() == nil {
				if err := addBatch(wctx, admin, queue, 5000); err != nil {
					if wctx.Err() == nil {
						check(err)
					}
					return
				}
				inserted.Add(5000)
			}
		})
		time.AfterFunc(*dur, stop)
	}
	start := time.Now()
	for range 4 {
		wg.Go(func() {
			var afterAt *time.Time
			var afterSeq *int64
			for wctx.Err() == nil && (*mode == "continuous" || done.Load() < int64(*n)) {
				rows, err := pool.Query(wctx, claimSQL, "bench-sql", 300.0, queue, afterAt, afterSeq, 1000)
				if err != nil {
					if wctx.Err() == nil {
						check(err)
					}
					return
				}
				cs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (claimed, error) {
					var c claimed
					err := r.Scan(&c.id, &c.gen, &c.attempt, &c.runAt, &c.seq, &c.deliv, &c.startedAt, &c.key, &c.task, &c.args, &c.trace)
					return c, err
				})
				if err != nil {
					if wctx.Err() == nil {
						check(err)
					}
					return
				}
				afterAt, afterSeq = nil, nil
				if len(cs) == 1000 {
					l := cs[len(cs)-1]
					afterAt, afterSeq = &l.runAt, &l.seq
				}
				if len(cs) == 0 {
					time.Sleep(time.Millisecond)
					continue
				}
				// Outcomes lock rows in id order, as the worker's do in key order.
				slices.SortFunc(cs, func(a, b claimed) int { return cmp.Compare(a.id, b.id) })
				ids := make([]int64, len(cs))
				gens := make([]int64, len(cs))
				dels := make([]int32, len(cs))
				sts := make([]time.Time, len(cs))
				for i, c := range cs {
					ids[i], gens[i], dels[i], sts[i] = c.id, c.gen, c.deliv, c.startedAt
				}
				var got int64
				var nt bool
				check(pool.QueryRow(ctx, completeSQL, ids, gens, dels, sts, 900.0, queue).Scan(&got, &nt))
				if got != int64(len(cs)) {
					check(fmt.Errorf("completed %d of %d", got, len(cs)))
				}
				done.Add(got)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	fmt.Printf("s3 %s: %d tasks worked, %d inserted in %.2fs = %.0f tasks/s\n", *mode, done.Load(), inserted.Load(), el.Seconds(), float64(done.Load())/el.Seconds())
	_, _ = admin.Exec(ctx, `DROP SCHEMA s3 CASCADE`)
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
