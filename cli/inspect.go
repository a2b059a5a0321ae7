package cli

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/shadows-go/shadows/queue"
)

func (a *app) snapshotCommand() *cobra.Command {
	var stats bool
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Show the queue's workers, running tasks and future tasks",
		Long: `Show the queue as it is now: how many workers serve it, how many of its tasks
run, then a table of the running tasks (longest running first) and of the
tasks waiting to run (earliest first). With --stats, also counts by task.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			q, err := a.openQueue(cmd, "snapshot")
			if err != nil {
				return err
			}
			defer q.Pool().Close()
			ctx := cmd.Context()
			s, err := q.Snapshot(ctx)
			if err != nil {
				return err
			}
			var st []queue.TaskStats
			if stats {
				if st, err = q.TaskStats(ctx); err != nil {
					return err
				}
			}
			return printSnapshot(cmd.OutOrStdout(), q.Name(), s, st, stats)
		},
	}
	cmd.Flags().BoolVar(&stats, "stats", false, "add counts by task: total, running, queued, scheduled, earliest and latest due time")
	return cmd
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

func printSnapshot(w io.Writer, name string, s *queue.Snapshot, stats []queue.TaskStats, withStats bool) error {
	now := s.Taken
	fmt.Fprintf(w, "Queue %q as of %s\n", clean(name), now.Local().Format("2006-01-02 15:04:05 -0700"))
	fmt.Fprintf(w, "%s, %d/%d running (%d queued, %d scheduled",
		plural(len(s.Workers), "worker", "workers"), s.RunningCount, s.Total, s.Queued, s.FutureCount-s.Queued)
	if s.Held > 0 {
		fmt.Fprintf(w, "; %d held by strikes", s.Held)
	}
	if s.Waiting > 0 {
		fmt.Fprintf(w, "; %d waiting for a concurrency slot", s.Waiting)
	}
	fmt.Fprintln(w, ")")
	if s.Total == 0 {
		fmt.Fprintln(w, "\nNo tasks.")
	} else {
		fmt.Fprintln(w)
		t := newTable(w, "WHEN", "TASK", "KEY", "WORKER", "STARTED")
		for _, r := range s.Running {
			t.row(relative(r.When, now), clean(r.Task), clean(r.Key), clean(r.Worker), relative(r.Started, now))
		}
		for _, f := range s.Future {
			t.row(relative(f.When, now), clean(f.Task), clean(f.Key), "", "")
		}
		if err := t.flush(); err != nil {
			return err
		}
		if n := s.RunningCount - len(s.Running); n > 0 {
			fmt.Fprintf(w, "(%s more running, not listed)\n", plural(n, "task", "tasks"))
		}
		if n := s.FutureCount - len(s.Future); n > 0 {
			fmt.Fprintf(w, "(%s more waiting, not listed)\n", plural(n, "task", "tasks"))
		}
	}
	if !withStats || len(stats) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t := newTable(w, "TASK", "TOTAL", "RUNNING", "QUEUED", "SCHEDULED", "EARLIEST", "LATEST")
	for _, st := range stats {
		t.row(clean(st.Task), strconv.Itoa(st.Total), strconv.Itoa(st.Running), strconv.Itoa(st.Queued), strconv.Itoa(st.Scheduled),
			relative(st.Oldest, now), relative(st.Newest, now))
	}
	return t.flush()
}

func (a *app) clearCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "clear",
		Short: "Remove every task that has not started yet",
		Long: `Remove every queued and scheduled task of the queue. Running tasks go on.
The removed tasks keep a cancelled record for the queue's record lifetime.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			q, err := a.openQueue(cmd, "clear")
			if err != nil {
				return err
			}
			defer q.Pool().Close()
			n, err := q.Clear(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Cleared %s from queue %q\n", plural(n, "task", "tasks"), clean(q.Name()))
			return nil
		},
	}
}

func (a *app) workersCommand() *cobra.Command {
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the live workers of the queue",
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			q, err := a.openQueue(cmd, "workers")
			if err != nil {
				return err
			}
			defer q.Pool().Close()
			ws, err := q.Workers(cmd.Context())
			if err != nil {
				return err
			}
			if len(ws) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "No workers on queue %q\n", clean(q.Name()))
				return nil
			}
			return printWorkers(cmd.OutOrStdout(), ws)
		},
	}
	forTask := &cobra.Command{
		Use:   "for-task TASK",
		Short: "List the live workers of the queue that can run TASK",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, argv []string) error {
			q, err := a.openQueue(cmd, "workers")
			if err != nil {
				return err
			}
			defer q.Pool().Close()
			ws, err := q.TaskWorkers(cmd.Context(), argv[0])
			if err != nil {
				return err
			}
			if len(ws) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "No workers on queue %q can run %q\n", clean(q.Name()), clean(argv[0]))
				return nil
			}
			return printWorkers(cmd.OutOrStdout(), ws)
		},
	}
	return groupCommand("workers", "List the queue's workers", ls, forTask)
}

// printWorkers writes a table of workers, the most recently seen first.
func printWorkers(w io.Writer, ws []queue.WorkerInfo) error {
	ws = slices.Clone(ws)
	slices.SortStableFunc(ws, func(a, b queue.WorkerInfo) int { return b.LastSeen.Compare(a.LastSeen) })
	now := time.Now()
	t := newTable(w, "NAME", "LAST SEEN", "TASKS")
	for _, wi := range ws {
		tasks := slices.Clone(wi.Tasks)
		slices.Sort(tasks)
		for i := range tasks {
			tasks[i] = clean(tasks[i])
		}
		list := strings.Join(tasks, ", ")
		if list == "" {
			list = "(none)"
		}
		seen := relative(wi.LastSeen, now)
		if wi.LastSeen.After(now) {
			seen = "just now" // the clocks of the server and this machine differ
		}
		t.row(clean(wi.Name), seen, list)
	}
	return t.flush()
}
