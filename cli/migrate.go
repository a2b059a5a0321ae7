package cli

import (
	"context"
	"fmt"
	"io"
	"path"
	"strconv"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/shadows-go/shadows/migrations"
)

func (a *app) migrateCommand() *cobra.Command {
	up := &cobra.Command{
		Use:   "up",
		Short: "Apply every migration not yet applied",
		Long: `Apply the shadows migrations not yet applied to the database. It is safe to
run from many processes at once: they wait for each other.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.migrate(cmd, func(ctx context.Context, pool *pgxpool.Pool) error { return migrations.Up(ctx, pool) })
		},
	}
	var to int64
	down := &cobra.Command{
		Use:   "down",
		Short: "Roll back the most recent migration",
		Long: `Roll back the most recent migration, or with --to every migration newer than
VERSION. Rolling back the first migration drops the shadows schema with all
its tasks.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("to") {
				if to < 0 {
					return usagef("--to %d: a version is 0 or more", to)
				}
				return a.migrate(cmd, func(ctx context.Context, pool *pgxpool.Pool) error { return migrations.DownTo(ctx, pool, to) })
			}
			return a.migrate(cmd, func(ctx context.Context, pool *pgxpool.Pool) error { return migrations.Down(ctx, pool) })
		},
	}
	down.Flags().Int64Var(&to, "to", 0, "roll back every migration newer than `VERSION` (0: all of them)")
	status := &cobra.Command{
		Use:   "status",
		Short: "List the migrations and whether each is applied",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := a.connect(cmd.Context(), "migrate", 0)
			if err != nil {
				return err
			}
			defer pool.Close()
			st, err := migrations.Statuses(cmd.Context(), pool)
			if err != nil {
				return err
			}
			t := newTable(cmd.OutOrStdout(), "VERSION", "MIGRATION", "STATE")
			for _, s := range st {
				state := "pending"
				if s.Applied {
					state = "applied"
				}
				t.row(strconv.FormatInt(s.Version, 10), path.Base(s.Name), state)
			}
			return t.flush()
		},
	}
	return groupCommand("migrate", "Apply, roll back or list the shadows schema migrations", up, down, status)
}

// migrate runs change on the database and prints the migrations it applied
// or rolled back.
func (a *app) migrate(cmd *cobra.Command, change func(context.Context, *pgxpool.Pool) error) error {
	ctx := cmd.Context()
	pool, err := a.connect(ctx, "migrate", 0)
	if err != nil {
		return err
	}
	defer pool.Close()
	before, err := migrations.Statuses(ctx, pool)
	if err != nil {
		return err
	}
	if err := change(ctx, pool); err != nil {
		return err
	}
	after, err := migrations.Statuses(ctx, pool)
	if err != nil {
		return err
	}
	return printMigrated(cmd.OutOrStdout(), before, after)
}

func printMigrated(w io.Writer, before, after []migrations.Status) error {
	was := make(map[int64]bool, len(before))
	for _, s := range before {
		was[s.Version] = s.Applied
	}
	changed := false
	var version int64
	for _, s := range after {
		if s.Applied {
			version = s.Version
		}
	}
	// Applied ones in order, rolled-back ones newest first.
	for _, s := range after {
		if s.Applied && !was[s.Version] {
			fmt.Fprintf(w, "Applied %s\n", path.Base(s.Name))
			changed = true
		}
	}
	for i := len(after) - 1; i >= 0; i-- {
		if s := after[i]; !s.Applied && was[s.Version] {
			fmt.Fprintf(w, "Rolled back %s\n", path.Base(s.Name))
			changed = true
		}
	}
	if !changed {
		fmt.Fprint(w, "Nothing to do: ")
	}
	fmt.Fprintf(w, "the schema is at version %d of %d\n", version, latest(after))
	return nil
}

func latest(st []migrations.Status) int64 {
	if len(st) == 0 {
		return 0
	}
	return st[len(st)-1].Version
}
