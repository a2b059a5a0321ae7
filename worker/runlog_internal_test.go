package worker

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
)

// A run's logger writes exactly what Logger.With would have: the run's
// attributes first, outside any group, with attributes and groups added
// later in their places.
func TestRunLoggerWritesWhatWithWould(t *testing.T) {
	uses := map[string]func(*slog.Logger){
		"plain":      func(l *slog.Logger) { l.Info("ran", "n", 1) },
		"no attrs":   func(l *slog.Logger) { l.Warn("ran") },
		"with":       func(l *slog.Logger) { l.With("b", 2).Error("ran", "n", 1) },
		"group":      func(l *slog.Logger) { l.WithGroup("g").Info("ran", "n", 1) },
		"group+with": func(l *slog.Logger) { l.WithGroup("g").With("b", 2).Info("ran", slog.Group("h", "n", 1)) },
		"attrs call": func(l *slog.Logger) { l.LogAttrs(context.Background(), slog.LevelInfo, "ran", slog.Int("n", 1)) },
		"below level": func(l *slog.Logger) {
			l.Debug("dropped", "n", 1)
		},
	}
	for name, use := range uses {
		for _, json := range []bool{false, true} {
			var want, got bytes.Buffer
			base := func(buf *bytes.Buffer) *slog.Logger {
				opts := &slog.HandlerOptions{ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
					if a.Key == slog.TimeKey && len(groups) == 0 {
						return slog.Attr{}
					}
					return a
				}}
				var h slog.Handler = slog.NewTextHandler(buf, opts)
				if json {
					h = slog.NewJSONHandler(buf, opts)
				}
				return slog.New(h).With("queue", "q")
			}
			use(base(&want).With("task", "backup", "key", "k 1", "attempt", 2))
			use(newRunLogger(base(&got), "backup", "k 1", 2))
			if got.String() != want.String() {
				t.Errorf("%s (json %v):\n got  %q\n want %q", name, json, got.String(), want.String())
			}
		}
	}
}
