package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/shadows-go/shadows/queue"
)

// watchInterval is how often watch reads the task's record.
const watchInterval = 250 * time.Millisecond

func (a *app) watchCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "watch KEY",
		Short: "Follow a task until it ends: its state, worker, error and progress",
		Long: `Follow the task with key KEY until it ends, showing its state, its worker,
its progress as its handler reports it, and its error.

Exits 0 when the task completes, 1 when it fails or is cancelled, or when
no task has the key.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, argv []string) error { return a.watch(cmd, argv[0]) },
	}
}

func (a *app) watch(cmd *cobra.Command, key string) error {
	q, err := a.openQueue(cmd, "watch")
	if err != nil {
		return err
	}
	defer q.Pool().Close()
	ctx := cmd.Context()
	ex, err := q.Execution(ctx, key)
	switch {
	case errors.Is(err, queue.ErrNotFound):
		return fmt.Errorf("no task with key %q in queue %q (it was never added, or its record has expired)", clean(key), clean(q.Name()))
	case errors.Is(err, queue.ErrInvalidKey):
		return usagef("KEY: %w", err)
	case err != nil:
		return err
	}
	out := newLive(cmd.OutOrStdout())
	tick := time.NewTicker(watchInterval)
	defer tick.Stop()
	var readErr error
	for {
		out.show(watchFields(ex, readErr, out.tty, time.Now()))
		if ex.State.Terminal() {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		next, err := q.Execution(ctx, key)
		switch {
		case errors.Is(err, queue.ErrNotFound):
			return fmt.Errorf("the record of task %q is gone: it ended in a queue that keeps no records, or it was removed", clean(key))
		case err != nil && ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			readErr = err // shown, and tried again
		default:
			ex, readErr = next, nil
		}
	}
	w := cmd.OutOrStdout()
	switch ex.State {
	case queue.StateFailed:
		fmt.Fprintln(w, "✗ Task failed")
		msg, _, _ := strings.Cut(ex.Error, "\n")
		return fmt.Errorf("task %q failed: %s", clean(key), clean(msg))
	case queue.StateCancelled:
		fmt.Fprintln(w, "✗ Task cancelled")
		return fmt.Errorf("task %q was cancelled", clean(key))
	default:
		fmt.Fprintln(w, "✓ Task completed")
		return nil
	}
}

// field is one labelled line (or more, for an error) of watch's display.
type field struct{ label, value string }

// watchFields describes ex. With live, times are relative to now, as
// suits a display redrawn in place; otherwise they are absolute, so that a
// log of the changes does not change every second.
func watchFields(ex *queue.Execution, readErr error, live bool, now time.Time) []field {
	at := func(t time.Time) string {
		if live {
			return relative(t, now)
		}
		return "at " + t.Local().Format("2006-01-02 15:04:05")
	}
	state := string(ex.State)
	switch ex.State {
	case queue.StateScheduled, queue.StateQueued:
		state += ", due " + at(ex.When)
	case queue.StateRunning:
		state += ", started " + at(ex.StartedAt)
	}
	if ex.Held {
		state += ", held by a strike"
	}
	if ex.WaitingOn != "" {
		state += ", waiting for a slot of " + clean(ex.WaitingOn)
	}
	if ex.Attempt > 1 {
		state += fmt.Sprintf(" (attempt %d)", ex.Attempt)
	}
	fs := []field{
		{"Key", clean(ex.Key)},
		{"Task", clean(ex.Task)},
		{"Queue", clean(ex.Queue)},
		{"State", state},
	}
	if ex.Worker != "" {
		fs = append(fs, field{"Worker", clean(ex.Worker)})
	}
	if p := ex.Progress; !p.UpdatedAt.IsZero() {
		fs = append(fs, field{"Progress", progressBar(p.Current, p.Total, 30)})
		if p.Message != "" {
			fs = append(fs, field{"Message", clean(p.Message)})
		}
	}
	if ex.Error != "" {
		fs = append(fs, field{"Error", cleanLines(ex.Error)})
	}
	if readErr != nil {
		fs = append(fs, field{"Database", "cannot read the task, retrying: " + oneLine(readErr.Error())})
	}
	return fs
}

// live shows watch's display. On a terminal it redraws it in place; else
// it prints the fields whose value changed.
type live struct {
	w     io.Writer
	tty   bool
	width int
	drawn int               // lines drawn last time, on a terminal
	last  map[string]string // values printed last, elsewhere
}

func newLive(w io.Writer) *live {
	l := &live{w: w, last: make(map[string]string)}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		l.tty, l.width = true, 80
		if width, _, err := term.GetSize(int(f.Fd())); err == nil && width > 0 {
			l.width = width
		}
	}
	return l
}

func (l *live) show(fs []field) {
	if !l.tty {
		for _, f := range fs {
			if l.last[f.label] != f.value {
				fmt.Fprintf(l.w, "%-9s %s\n", f.label+":", f.value)
				l.last[f.label] = f.value
			}
		}
		return
	}
	var b strings.Builder
	if l.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA\r\x1b[J", l.drawn) // back to the top, erase
	}
	l.drawn = 0
	for _, f := range fs {
		for i, line := range strings.Split(strings.ReplaceAll(f.value, "\t", "    "), "\n") {
			label := ""
			if i == 0 {
				label = f.label + ":"
			}
			b.WriteString(truncate(fmt.Sprintf("%-9s %s", label, line), l.width-1))
			b.WriteByte('\n')
			l.drawn++
		}
	}
	io.WriteString(l.w, b.String())
}

// truncate shortens s to at most n runes, so that no line wraps.
func truncate(s string, n int) string {
	if n < 1 || utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
