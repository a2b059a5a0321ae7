package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"
)

type inflightKey struct {
	key        string
	generation int64
}

// inflight is a claimed task from its claim until its outcome is recorded.
type inflight struct {
	x         *execution
	ctx       context.Context
	cancel    context.CancelFunc
	mu        sync.Mutex
	cancelled bool // queue.Cancel reached it
}

func (f *inflight) markCancelled() {
	f.mu.Lock()
	f.cancelled = true
	f.mu.Unlock()
	f.cancel()
}

func (f *inflight) wasCancelled() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cancelled
}

// inflightSet holds the tasks this worker must renew leases for and can
// cancel. It is safe for concurrent use.
type inflightSet struct {
	mu sync.Mutex
	m  map[inflightKey]*inflight
}

func (s *inflightSet) add(x *execution) *inflight {
	ctx, cancel := context.WithCancel(context.Background())
	f := &inflight{x: x, ctx: ctx, cancel: cancel}
	s.mu.Lock()
	s.m[inflightKey{x.key, x.generation}] = f
	s.mu.Unlock()
	return f
}

func (s *inflightSet) remove(k inflightKey) {
	s.mu.Lock()
	f := s.m[k]
	delete(s.m, k)
	s.mu.Unlock()
	if f != nil {
		f.cancel()
	}
}

// cancelKey cancels every generation of key this worker is running.
func (s *inflightSet) cancelKey(key string) {
	s.mu.Lock()
	var hit []*inflight
	for k, f := range s.m {
		if k.key == key {
			hit = append(hit, f)
		}
	}
	s.mu.Unlock()
	for _, f := range hit {
		f.markCancelled()
	}
}

func (s *inflightSet) cancelExact(k inflightKey) {
	s.mu.Lock()
	f := s.m[k]
	s.mu.Unlock()
	if f != nil {
		f.markCancelled()
	}
}

func (s *inflightSet) snapshot() (keys []string, generations []int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.m {
		keys = append(keys, k.key)
		generations = append(generations, k.generation)
	}
	return keys, generations
}

// outcome is how a run ended, as the finisher records it.
type outcome struct {
	key        inflightKey
	state      string // completed, failed or cancelled
	err        string
	result     json.RawMessage
	recordedCh chan struct{} // closed once written; nil if nobody waits
}

// execute runs one claimed task and hands its outcome to the finisher.
func (w *Worker) execute(f *inflight) {
	x := f.x
	reg := w.reg.lookup(x.name)
	if reg == nil {
		reg = w.fallback
	}
	x.logger = w.logger.With("task", x.name, "key", x.key, "attempt", x.attempt)
	out := outcome{key: inflightKey{x.key, x.generation}}

	if w.atMost != nil && w.exceedsAtMost(x.key) {
		x.logger.Info("task dropped: it reached its RunAtMost limit")
		out.state = "cancelled"
		w.done.push(out)
		return
	}

	ctx := f.ctx
	if reg.policy.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, reg.policy.Timeout,
			fmt.Errorf("task %s exceeded timeout of %v", x.key, reg.policy.Timeout))
		defer cancel()
	}
	logInfo := x.logger.Enabled(ctx, slog.LevelInfo)
	if logInfo {
		x.logger.Info("task started", "lateness", x.started.Sub(x.when).Round(time.Millisecond), "redelivered", x.redelivered)
	}
	begin := time.Now()
	result, err := w.call(ctx, reg, x)
	switch {
	case err == nil:
		out.state = "completed"
		out.result = result
	case f.wasCancelled():
		out.state = "cancelled"
	default:
		if cause := context.Cause(ctx); errors.Is(err, context.DeadlineExceeded) && cause != nil && cause != context.DeadlineExceeded {
			err = cause
		}
		out.state = "failed"
		out.err = err.Error()
	}
	if logInfo || out.state == "failed" {
		attrs := []any{"state", out.state, "duration", time.Since(begin).Round(time.Microsecond)}
		if out.state == "failed" {
			x.logger.Error("task failed", append(attrs, "error", out.err)...)
		} else {
			x.logger.Info("task finished", attrs...)
		}
	}
	w.done.push(out)
}

// call runs the handler, turning a panic into an error.
func (w *Worker) call(ctx context.Context, reg *registration, x *execution) (result json.RawMessage, err error) {
	defer func() {
		if p := recover(); p != nil {
			x.logger.Error("task panicked", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			result, err = nil, fmt.Errorf("panic: %v", p)
		}
	}()
	return reg.run(ctx, x)
}

// exceedsAtMost counts a claim of key and reports whether it is past the
// key's RunAtMost limit. Only the claim loop's goroutines call it.
func (w *Worker) exceedsAtMost(key string) bool {
	limit, ok := w.atMost[key]
	if !ok {
		return false
	}
	w.atMostMu.Lock()
	defer w.atMostMu.Unlock()
	w.runs[key]++
	return w.runs[key] > limit
}
