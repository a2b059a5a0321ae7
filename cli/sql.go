package cli

// The SQL of the command itself, all of it read-only: the check that the
// schema is migrated and the per-task counts of snapshot --stats. Everything
// else goes through the queue, worker and migrations packages.

import (
	"context"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shadows-go/shadows/migrations"
)

// requiredVersions lists the versions of the migrations this program
// carries, from their file names (NNNNN_name.sql).
func requiredVersions() ([]int64, error) {
	names, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil {
		return nil, err
	}
	var out []int64
	for _, n := range names {
		digits, _, _ := strings.Cut(n, "_")
		v, err := strconv.ParseInt(digits, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("migration file %s has no version", n)
		}
		out = append(out, v)
	}
	slices.Sort(out)
	return out, nil
}

// checkSchema fails, telling how to fix it, unless every migration this
// program carries has been applied. Unlike migrations.Statuses it writes
// nothing and takes no lock.
func (a *app) checkSchema(ctx context.Context, pool *pgxpool.Pool) error {
	need, err := requiredVersions()
	if err != nil {
		return err
	}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", migrations.VersionTable).Scan(&exists); err != nil {
		return fmt.Errorf("checking the schema: %w", err)
	}
	var applied []int64
	if exists {
		rows, err := pool.Query(ctx, "SELECT version_id FROM "+pgx.Identifier{migrations.VersionTable}.Sanitize()+" WHERE is_applied")
		if err != nil {
			return fmt.Errorf("checking the schema: %w", err)
		}
		if applied, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
			return fmt.Errorf("checking the schema: %w", err)
		}
	}
	var missing int
	for _, v := range need {
		if !slices.Contains(applied, v) {
			missing++
		}
	}
	switch {
	case missing == 0:
		return nil
	case missing == len(need):
		return fmt.Errorf("the database has no shadows schema: run %q first", a.cfg.Name+" migrate up")
	default:
		return fmt.Errorf("the database's shadows schema lacks %d of %d migrations: run %q first", missing, len(need), a.cfg.Name+" migrate up")
	}
}

// taskStats are the counts of one task name among a queue's live tasks.
type taskStats struct {
	Task      string
	Total     int64
	Running   int64
	Queued    int64
	Scheduled int64
	Oldest    time.Time // earliest due time
	Newest    time.Time // latest due time
}

const taskStatsSQL = `
SELECT task,
       count(*),
       count(*) FILTER (WHERE state = 'running'),
       count(*) FILTER (WHERE state = 'scheduled' AND run_at <= now()),
       count(*) FILTER (WHERE state = 'scheduled' AND run_at > now()),
       min(run_at),
       max(run_at)
FROM shadows.tasks
WHERE queue = $1 AND state IN ('scheduled', 'running')
GROUP BY task
ORDER BY count(*) DESC, task`

// readTaskStats counts the live tasks of queueName by task name, most
// numerous first.
func readTaskStats(ctx context.Context, pool *pgxpool.Pool, queueName string) ([]taskStats, error) {
	rows, err := pool.Query(ctx, taskStatsSQL, queueName)
	if err != nil {
		return nil, fmt.Errorf("task statistics: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (taskStats, error) {
		var s taskStats
		err := r.Scan(&s.Task, &s.Total, &s.Running, &s.Queued, &s.Scheduled, &s.Oldest, &s.Newest)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("task statistics: %w", err)
	}
	return out, nil
}
