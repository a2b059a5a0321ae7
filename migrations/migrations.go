// Package migrations holds the shadows schema as goose SQL migrations and
// applies them.
//
// The SQL files are embedded in [FS], so a program that imports this package
// carries its schema with it:
//
//	if err := migrations.Up(ctx, pool); err != nil { … }
//
// Up is safe to call from every process at start-up: a PostgreSQL session
// advisory lock serialises concurrent callers, and a schema that is already
// current is left alone. The applied versions are recorded in the table
// shadows_goose_db_version, so shadows never touches an application's own
// goose history. The same files work with the goose command:
//
//	goose -dir migrations -table shadows_goose_db_version postgres "$DATABASE_URL" up
package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/crc64"
	"io/fs"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// FS holds the migration files, named NNNNN_name.sql.
//
//go:embed *.sql
var FS embed.FS

// VersionTable is the table in which applied migration versions are recorded.
const VersionTable = "shadows_goose_db_version"

// lockID is the session advisory lock that serialises migrating processes. It
// differs from goose's default so that shadows' migrations never wait on an
// application's own.
var lockID = int64(crc64.Checksum([]byte("shadows-migrations"), crc64.MakeTable(crc64.ECMA)) >> 1)

// ErrNotMigrated is returned by Check when migrations are missing.
var ErrNotMigrated = errors.New("shadows schema is not migrated")

// Check returns an error wrapping ErrNotMigrated unless every migration in
// FS has been applied. Unlike Version and Statuses it takes no lock and
// writes nothing, so it is safe against any database.
func Check(ctx context.Context, pool *pgxpool.Pool) error {
	need, err := fs.Glob(FS, "*.sql")
	if err != nil {
		return err
	}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", VersionTable).Scan(&exists); err != nil {
		return fmt.Errorf("check schema: %w", err)
	}
	applied := map[int64]bool{}
	if exists {
		rows, err := pool.Query(ctx, "SELECT version_id FROM "+pgx.Identifier{VersionTable}.Sanitize()+" WHERE is_applied")
		if err != nil {
			return fmt.Errorf("check schema: %w", err)
		}
		versions, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return fmt.Errorf("check schema: %w", err)
		}
		for _, v := range versions {
			applied[v] = true
		}
	}
	missing := 0
	for _, name := range need {
		digits, _, _ := strings.Cut(name, "_")
		v, err := strconv.ParseInt(digits, 10, 64)
		if err != nil {
			return fmt.Errorf("migration file %s has no version", name)
		}
		if !applied[v] {
			missing++
		}
	}
	if missing > 0 {
		return fmt.Errorf("%w: %d of %d migrations are not applied", ErrNotMigrated, missing, len(need))
	}
	return nil
}

// Status is one migration and whether it has been applied.
type Status struct {
	Version int64
	Name    string
	Applied bool
}

// Up applies every migration not yet applied. Concurrent callers wait for
// each other; a second call is a no-op.
func Up(ctx context.Context, pool *pgxpool.Pool) error {
	return withProvider(pool, func(p *goose.Provider) error {
		if _, err := p.Up(ctx); err != nil {
			return fmt.Errorf("migrate up: %w", err)
		}
		return nil
	})
}

// Down rolls back the most recent migration. DownTo(ctx, pool, 0) removes
// the whole schema.
func Down(ctx context.Context, pool *pgxpool.Pool) error {
	return withProvider(pool, func(p *goose.Provider) error {
		if _, err := p.Down(ctx); err != nil && !errors.Is(err, goose.ErrNoNextVersion) {
			return fmt.Errorf("migrate down: %w", err)
		}
		return nil
	})
}

// DownTo rolls back every migration newer than version.
func DownTo(ctx context.Context, pool *pgxpool.Pool, version int64) error {
	return withProvider(pool, func(p *goose.Provider) error {
		if _, err := p.DownTo(ctx, version); err != nil {
			return fmt.Errorf("migrate down to %d: %w", version, err)
		}
		return nil
	})
}

// Version reports the newest applied migration version, 0 when none is.
func Version(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var v int64
	err := withProvider(pool, func(p *goose.Provider) error {
		var err error
		v, err = p.GetDBVersion(ctx)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("migration version: %w", err)
	}
	return v, nil
}

// Statuses lists every known migration in order with whether it is applied.
func Statuses(ctx context.Context, pool *pgxpool.Pool) ([]Status, error) {
	var out []Status
	err := withProvider(pool, func(p *goose.Provider) error {
		st, err := p.Status(ctx)
		if err != nil {
			return err
		}
		for _, s := range st {
			out = append(out, Status{
				Version: s.Source.Version,
				Name:    s.Source.Path,
				Applied: s.State == goose.StateApplied,
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("migration status: %w", err)
	}
	return out, nil
}

func withProvider(pool *pgxpool.Pool, fn func(*goose.Provider) error) error {
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(lockID))
	if err != nil {
		return err
	}
	sqlDB := stdlib.OpenDBFromPool(pool)
	defer sqlDB.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, sqlDB, FS,
		goose.WithTableName(VersionTable),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
	)
	if err != nil {
		return err
	}
	return fn(p)
}
