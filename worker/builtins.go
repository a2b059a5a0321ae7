package worker

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Trace is the built-in task "trace": it logs its message with the task's
// key, age and worker. Add it to mark milestones in a queue's log.
type Trace struct {
	Message string `json:"message" shadows:"logged"`
}

// TaskName returns "trace".
func (Trace) TaskName() string { return "trace" }

// Fail is the built-in task "fail": it fails with its message, and is retried
// once, for testing alerting.
type Fail struct {
	Message string `json:"message" shadows:"logged"`
}

// TaskName returns "fail".
func (Fail) TaskName() string { return "fail" }

// Sleep is the built-in task "sleep": it sleeps for Seconds (or until
// cancelled), for synthetic load.
type Sleep struct {
	Seconds float64 `json:"seconds" shadows:"logged"`
}

// TaskName returns "sleep".
func (Sleep) TaskName() string { return "sleep" }

func describe(i *Info) string {
	return fmt.Sprintf("%q added to queue %q %v ago now running on worker %q",
		i.Key, i.Queue.Name(), time.Since(i.When).Round(time.Millisecond), i.Worker)
}

func registerBuiltins(r *Registry) {
	MustRegister(r, func(ctx context.Context, t *Task[Trace]) error {
		t.Logger.Info(t.Args.Message + ": " + describe(&t.Info))
		return nil
	}, Policy{})
	MustRegister(r, func(ctx context.Context, t *Task[Fail]) error {
		return errors.New(t.Args.Message + ": " + describe(&t.Info))
	}, Policy{Retry: Retry{Attempts: 2}})
	MustRegister(r, func(ctx context.Context, t *Task[Sleep]) error {
		t.Logger.Info(fmt.Sprintf("sleeping for %v seconds", t.Args.Seconds))
		timer := time.NewTimer(time.Duration(t.Args.Seconds * float64(time.Second)))
		defer timer.Stop()
		select {
		case <-timer.C:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}, Policy{})
}
