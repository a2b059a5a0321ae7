package worker

import (
	"context"
	"log/slog"
	"sync/atomic"
)

// runHandler is the handler of a run's logger: it adds the run's task, key
// and attempt to the records that are actually handled. Logger.With would
// add them at once, and slog's own handlers format attributes given to
// With on the spot: for a run that logs nothing (nearly every run, with a
// logger at Warn level) that formatting cost about as much CPU as the rest
// of the worker's work for the run.
type runHandler struct {
	inner   slog.Handler
	task    string
	key     string
	attempt int

	// applied is inner with the run's attributes applied, made on the
	// first WithAttrs or WithGroup and shared by later ones (two made at
	// once are equal; either may stay).
	applied atomic.Pointer[slog.Handler]
}

func newRunLogger(base *slog.Logger, task, key string, attempt int) *slog.Logger {
	return slog.New(&runHandler{inner: base.Handler(), task: task, key: key, attempt: attempt})
}

func (h *runHandler) attrs() []slog.Attr {
	return []slog.Attr{slog.String("task", h.task), slog.String("key", h.key), slog.Int("attempt", h.attempt)}
}

func (h *runHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.inner.Enabled(ctx, level)
}

// Handle puts the run's attributes first, where With would have put them.
func (h *runHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	out.AddAttrs(h.attrs()...)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(a)
		return true
	})
	return h.inner.Handle(ctx, out)
}

// WithAttrs and WithGroup hand over to the inner handler with the run's
// attributes applied first, so they stay outside any group.
func (h *runHandler) withRun() slog.Handler {
	if p := h.applied.Load(); p != nil {
		return *p
	}
	applied := h.inner.WithAttrs(h.attrs())
	h.applied.Store(&applied)
	return applied
}

func (h *runHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return h.withRun().WithAttrs(attrs)
}

func (h *runHandler) WithGroup(name string) slog.Handler {
	return h.withRun().WithGroup(name)
}
