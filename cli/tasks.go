package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/worker"
)

// addFlags are the options of the tasks subcommands.
type addFlags struct {
	delay time.Duration
	when  time.Time
	key   string
}

func (a *app) tasksCommand() *cobra.Command {
	trace := a.addCommand("trace [MESSAGE]", `Add a trace task, which logs MESSAGE (default "Howdy!") on the worker`,
		func(argv []string) (queue.Args, error) {
			return worker.Trace{Message: argOr(argv, "Howdy!")}, nil
		})
	fail := a.addCommand("fail [MESSAGE]", `Add a fail task, which fails with MESSAGE (default "Howdy!") and is retried once`,
		func(argv []string) (queue.Args, error) {
			return worker.Fail{Message: argOr(argv, "Howdy!")}, nil
		})
	sleep := a.addCommand("sleep [SECONDS]", "Add a sleep task, which sleeps for SECONDS (a duration, default 1)",
		func(argv []string) (queue.Args, error) {
			s := argOr(argv, "1")
			d, err := parseDuration(s)
			if err != nil {
				return nil, usagef("SECONDS: %w", err)
			}
			if d < 0 {
				return nil, usagef("SECONDS: %s is negative", s)
			}
			return worker.Sleep{Seconds: d.Seconds()}, nil
		})
	return groupCommand("tasks", "Add the built-in tasks trace, fail and sleep, to test a queue", trace, fail, sleep)
}

func argOr(argv []string, def string) string {
	if len(argv) > 0 {
		return argv[0]
	}
	return def
}

// addCommand returns a command that adds the task that build makes of its
// arguments and prints its key.
func (a *app) addCommand(use, short string, build func([]string) (queue.Args, error)) *cobra.Command {
	f := &addFlags{}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, argv []string) error {
			taskArgs, err := build(argv)
			if err != nil {
				return err
			}
			q, err := a.openQueue(cmd, "tasks")
			if err != nil {
				return err
			}
			defer q.Pool().Close()
			opts := &queue.AddOpts{Key: f.key, When: f.when}
			if f.delay > 0 {
				opts.When = time.Now().Add(f.delay)
			}
			ex, err := q.Add(cmd.Context(), taskArgs, opts)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch ex.Disposition {
			case queue.DispositionScheduled:
				fmt.Fprintf(out, "Added %s task %q to queue %q", clean(ex.Task), clean(ex.Key), clean(q.Name()))
				if ex.State == queue.StateScheduled {
					fmt.Fprintf(out, ", due %s", relative(ex.When, time.Now()))
				}
				fmt.Fprintln(out)
				return nil
			case queue.DispositionAlreadyScheduled:
				fmt.Fprintf(out, "Task %q is already %s in queue %q: nothing added\n", clean(ex.Key), ex.State, clean(q.Name()))
				return nil
			case queue.DispositionStruck:
				return fmt.Errorf("%s task %q was not added to queue %q: struck by %s", clean(ex.Task), clean(ex.Key), clean(q.Name()), clean(ex.StruckBy))
			default:
				return fmt.Errorf("%s task %q was not added to queue %q: %s", clean(ex.Task), clean(ex.Key), clean(q.Name()), ex.Disposition)
			}
		},
	}
	fl := cmd.Flags()
	fl.Var(durationValue{d: &f.delay}, "delay", "run the task after this long")
	fl.Var(timeValue{t: &f.when}, "when", "run the task at this time (2025-06-01T15:04:05Z, or 2025-06-01 15:04:05 in local time)")
	fl.StringVar(&f.key, "key", "", "the task's key (default a new UUID); adding a key that is scheduled, queued or running adds nothing")
	cmd.MarkFlagsMutuallyExclusive("delay", "when")
	return cmd
}
