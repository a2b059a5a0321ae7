package worker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/shadows-go/shadows/db"
	"github.com/shadows-go/shadows/internal/pgtext"
	"github.com/shadows-go/shadows/internal/telemetry"
)

// inflightKey names a run. Key and generation alone do not: a key's
// generation starts again at 1 once its record is gone, so an old run that
// outlived its record and the key's next run can share both. The claim's
// start time (the database's, to the microsecond) tells them apart.
type inflightKey struct {
	key        string
	generation int64
	started    int64 // Unix microseconds
}

func runKey(x *execution) inflightKey {
	return inflightKey{x.Key, x.generation, x.started.UnixMicro()}
}

// startedAt is the run's claim time, as statements guarding its writes
// compare it.
func (k inflightKey) startedAt() time.Time { return time.UnixMicro(k.started) }

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
	// early holds the exact cancels that found no run in flight, with
	// when they came: a claim commits before its runs are registered (after
	// admission, which may take a round trip), so a cancel of a run just
	// claimed can arrive first. add applies it.
	early map[inflightKey]time.Time
}

// earlyCancelTTL bounds how long an unmatched cancel is kept, and
// earlyCancelMax how many: every worker hears every cancel of its queue,
// mostly of runs on other workers.
const (
	earlyCancelTTL = time.Minute
	earlyCancelMax = 10_000
)

func (s *inflightSet) add(x *execution) *inflight {
	ctx, cancel := context.WithCancel(context.Background())
	f := &inflight{x: x, ctx: ctx, cancel: cancel}
	k := runKey(x)
	s.mu.Lock()
	s.m[k] = f
	_, early := s.early[k]
	if early {
		delete(s.early, k)
	}
	s.mu.Unlock()
	if early {
		f.markCancelled()
	}
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

// cancelRun cancels the run of key at generation, or every run of key this
// worker has when generation is 0. Naming the generation matters once a
// cancel has freed the key: a late notification for the old run must not
// cancel a new run of the same key. Cancels name the claim time too
// (cancelExact); this serves notifications from earlier versions.
func (s *inflightSet) cancelRun(key string, generation int64) {
	s.cancelWhere(func(k inflightKey) bool {
		return k.key == key && (generation == 0 || k.generation == generation)
	})
}

// cancelBelow cancels every run of key whose generation is below
// generation: runs whose record moved on (replaced, or cancelled and added
// again) while they ran, which a cancel of the key stops as well.
func (s *inflightSet) cancelBelow(key string, generation int64) {
	s.cancelWhere(func(k inflightKey) bool { return k.key == key && k.generation < generation })
}

// cancelWhere cancels the runs in flight that match, outside the lock.
func (s *inflightSet) cancelWhere(match func(inflightKey) bool) {
	s.mu.Lock()
	var hit []*inflight
	for k, f := range s.m {
		if match(k) {
			hit = append(hit, f)
		}
	}
	s.mu.Unlock()
	for _, f := range hit {
		f.markCancelled()
	}
}

// cancelExact cancels the one run k names, if it is in flight.
func (s *inflightSet) cancelExact(k inflightKey) {
	s.mu.Lock()
	f := s.m[k]
	if f == nil {
		s.keepEarly(k, time.Now())
	}
	s.mu.Unlock()
	if f != nil {
		f.markCancelled()
	}
}

// keepEarly remembers an unmatched cancel (see early). Called with mu held.
func (s *inflightSet) keepEarly(k inflightKey, now time.Time) {
	if s.early == nil {
		s.early = make(map[inflightKey]time.Time)
	}
	if len(s.early) >= earlyCancelMax {
		for ek, at := range s.early {
			if now.Sub(at) > earlyCancelTTL {
				delete(s.early, ek)
			}
		}
		if len(s.early) >= earlyCancelMax {
			return
		}
	}
	s.early[k] = now
}

// snapshot lists the tasks in flight, sorted by key so that statements
// locking their rows always lock them in the same order.
func (s *inflightSet) snapshot() (keys []string, generations []int64, deliveries []int32, started []time.Time) {
	s.mu.Lock()
	xs := make([]*execution, 0, len(s.m))
	for _, f := range s.m {
		xs = append(xs, f.x)
	}
	s.mu.Unlock()
	slices.SortFunc(xs, func(a, b *execution) int { return strings.Compare(a.Key, b.Key) })
	for _, x := range xs {
		keys = append(keys, x.Key)
		generations = append(generations, x.generation)
		deliveries = append(deliveries, x.deliveries)
		started = append(started, x.started)
	}
	return keys, generations, deliveries, started
}

// heldSlots lists the concurrency slots held by runs in flight, for the
// worker to renew their leases with the task leases, sorted so that every
// renewal locks them in the same order.
func (s *inflightSet) heldSlots() (p db.RenewSlotsParams) {
	type held struct {
		key string
		run int64
	}
	var all []held
	s.mu.Lock()
	for _, f := range s.m {
		for _, slot := range f.x.slots {
			all = append(all, held{slot.key, f.x.runID})
		}
	}
	s.mu.Unlock()
	slices.SortFunc(all, func(a, b held) int {
		if c := strings.Compare(a.key, b.key); c != 0 {
			return c
		}
		return cmp.Compare(a.run, b.run)
	})
	for _, h := range all {
		p.LimitKeys = append(p.LimitKeys, h.key)
		p.RunIds = append(p.RunIds, h.run)
	}
	return p
}

// Outcome states as the finisher records them.
const (
	stateCompleted   = "completed"
	stateFailed      = "failed"
	stateCancelled   = "cancelled"
	stateRescheduled = "scheduled" // a retry or a perpetual task's next run
	// stateDeferred is a run an admission rule put off before its handler
	// ran: rescheduled like a retry, but a cancel meanwhile ends it
	// cancelled (its handler never succeeded).
	stateDeferred = "deferred"
)

// outcome is how a run ended, as the finisher records it.
type outcome struct {
	key        inflightKey
	deliveries int32
	slots      []slotRequest // concurrency slots to release, held under runID
	runID      int64
	state      string
	err        string
	result     json.RawMessage
	// For stateRescheduled and stateDeferred: the next run.
	nextAt      time.Time
	nextArgs    json.RawMessage // nil keeps the arguments
	nextAttempt int
}

// makeStorable turns an outcome the database would refuse into one it
// stores: the error text loses NUL bytes and invalid UTF-8, and a result or
// next run's arguments that jsonb cannot hold fail the run instead (with
// an error saying why) rather than fail, again and again, the batch that
// records it along with other runs' outcomes.
func (o *outcome) makeStorable() {
	o.err = pgtext.Text(o.err)
	if err := pgtext.CheckJSON(o.result); err != nil {
		o.state, o.result = stateFailed, nil
		o.err = "the task's result cannot be stored: " + err.Error()
	}
	if err := pgtext.CheckJSON(o.nextArgs); err != nil {
		o.state, o.nextArgs, o.nextAt, o.nextAttempt = stateFailed, nil, time.Time{}, 0
		o.err = "the next run's arguments cannot be stored: " + err.Error()
	}
}

// unstorable is the outcome recorded in place of one the database refused
// (see finisher.writeEach): the run failed, with the server's reason.
func (o outcome) unstorable(err error) outcome {
	return outcome{key: o.key, deliveries: o.deliveries, slots: o.slots, runID: o.runID, state: stateFailed,
		err: pgtext.Text("the task's outcome could not be stored: " + err.Error())}
}

// execute runs one claimed task and hands its outcome to the finisher.
func (w *Worker) execute(f *inflight) {
	x := f.x
	reg := x.reg
	if reg == nil {
		reg = w.fallback
	}
	// A logger that drops even errors needs no attributes.
	x.Logger = w.logger
	if w.logger.Enabled(f.ctx, slog.LevelError) {
		x.Logger = newRunLogger(w.logger, x.Name, x.Key, x.Attempt)
	}
	out := outcome{key: runKey(x), deliveries: x.deliveries, slots: x.slots, runID: x.runID}
	policy := reg.policy

	if w.atMost != nil && w.exceedsAtMost(x.Key) {
		x.Logger.Info("task dropped: it reached its RunAtMost limit")
		out.state = stateCancelled
		w.done.push(out)
		return
	}

	if x.preErr != nil {
		out.state, out.err, out.slots = stateFailed, x.preErr.Error(), nil
		x.Logger.Error("↩ "+x.Name+"(…) failed before it started", "error", out.err)
		w.done.push(out)
		return
	}

	if policy.admitted() && w.admitOrDefer(f.ctx, x, policy, &out) {
		w.done.push(out)
		return
	}

	attrs := w.attrs(x.Name)
	runCtx, span := w.tel.StartRun(f.ctx, x.Name, x.traceContext, x.Key, x.Attempt)
	defer span.End()
	// Each instrument is asked whether anything records it before a
	// measurement is made: without an SDK (or with a view dropping it) a
	// call would still allocate its options.
	add(runCtx, w.tel.Started, attrs)
	if x.Redelivered {
		add(runCtx, w.tel.Redelivered, attrs)
	}
	if w.tel.Lateness.Enabled(runCtx) {
		w.tel.Lateness.Record(runCtx, x.started.Sub(x.When).Seconds(), attrs)
	}
	if running := w.tel.Running; running.Enabled(runCtx) {
		running.Add(runCtx, 1, attrs)
		defer running.Add(runCtx, -1, attrs) // the same decision for both ends
	}

	x.timeout = &Timeout{base: policy.Timeout}
	ctx, stop := x.timeout.start(runCtx, x.Key)
	defer stop()
	if policy.perpetual() {
		x.perpetual = &perpetualState{}
		if policy.Perpetual != nil {
			x.perpetual.every = policy.Perpetual.Every
		}
	}
	x.logInfo = x.Logger.Enabled(ctx, slog.LevelInfo)
	result, err := w.call(ctx, reg, x)
	if x.began.IsZero() { // the handler never started
		x.began = time.Now()
		x.call = x.Name + "(…)"
	}
	took := time.Since(x.began).Round(time.Microsecond)
	if err != nil {
		if c := context.Cause(ctx); errors.Is(err, context.Canceled) && c != nil && !errors.Is(c, context.Canceled) {
			err = c // the time limit, not a bare "context canceled"
		}
	}
	var timedOut *errTimeout
	if c := context.Cause(ctx); err == nil && errors.As(c, &timedOut) {
		// As docket does, a run past its time limit fails even when its
		// handler ignored the cancellation and returned nil.
		err = c
	}
	w.decide(&out, f, reg, err, result)
	out.makeStorable()
	w.measure(runCtx, span, x, &out, err, took, attrs)
	switch out.state {
	case stateFailed:
		x.Logger.Error("↩ "+x.callText()+" failed", "duration", took, "error", out.err)
	case stateRescheduled:
		level, suffix := slog.LevelInfo, ""
		if err != nil {
			level, suffix = slog.LevelError, " failed; rescheduled"
		}
		if x.Logger.Enabled(ctx, level) {
			x.Logger.Log(ctx, level, "↫ "+x.callText()+suffix, "duration", took, "next", out.nextAt, "next_attempt", out.nextAttempt, "error", out.err)
		}
	default:
		if x.logInfo {
			x.Logger.Info("↩ "+x.callText(), "state", out.state, "duration", took)
		}
	}
	w.done.push(out)
}

// renderSafely renders a call for the log; a panicking String method of an
// argument (outside the handler's recover here) yields "name(…)".
func renderSafely(render func() string, name string) (call string) {
	defer func() {
		if recover() != nil {
			call = name + "(…)"
		}
	}()
	return render()
}

// measure records a run's outcome in the metrics and its span.
func (w *Worker) measure(ctx context.Context, span trace.Span, x *execution, out *outcome, err error, took time.Duration, attrs metric.MeasurementOption) {
	if w.tel.Duration.Enabled(ctx) {
		w.tel.Duration.Record(ctx, took.Seconds(), attrs)
	}
	add(ctx, w.tel.Completed, attrs)
	switch {
	case err == nil:
		add(ctx, w.tel.Succeeded, attrs)
	case out.state == stateCancelled:
		// A cancel is not a failure.
	default:
		add(ctx, w.tel.Failed, attrs)
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	if out.state == stateRescheduled {
		if out.nextAttempt > x.Attempt {
			add(ctx, w.tel.Retried, attrs)
		} else {
			add(ctx, w.tel.Perpetuated, attrs)
		}
	}
}

// add counts one on c if anything records c.
func add(ctx context.Context, c metric.Int64Counter, attrs metric.MeasurementOption) {
	if c.Enabled(ctx) {
		c.Add(ctx, 1, attrs)
	}
}

// attrs returns the metric labels of a task's runs on this worker.
func (w *Worker) attrs(task string) metric.MeasurementOption {
	if a, ok := w.labels.Load(task); ok {
		return a.(metric.MeasurementOption)
	}
	a := w.tel.Attrs(telemetry.TaskKey.String(task), telemetry.WorkerKey.String(w.cfg.Name))
	w.labels.Store(task, a)
	return a
}

// admitOrDefer checks the policy's admission rules. When they drop or delay
// the run it fills out and returns true; the handler must not run. If the
// check cannot be made (the database is away), the run is delayed briefly.
func (w *Worker) admitOrDefer(ctx context.Context, x *execution, policy *compiledPolicy, out *outcome) bool {
	p, err := admission(x.Name, x.Key, policy, x.args)
	if err != nil {
		out.state, out.err = stateFailed, err.Error()
		x.Logger.Error("↩ "+x.Name+"(…) failed before it started", "error", out.err)
		return true
	}
	p.Queue = w.q.Name()
	actx, cancel := context.WithTimeout(ctx, w.opTimeout())
	row, err := w.queries.Admit(actx, w.pool, p)
	cancel()
	if err != nil {
		row.Action, row.DelaySeconds, row.Reason = "reschedule", w.backoff(0).Seconds(), "admission check failed: "+err.Error()
	}
	if row.Action != "drop" && ctx.Err() != nil {
		// Cancelled before its handler started (the run's context is
		// cancelled only by a cancel): it ends cancelled, not delayed.
		out.state, out.err = stateCancelled, ctx.Err().Error()
		return true
	}
	switch row.Action {
	case "drop":
		out.state, out.err = stateCancelled, "dropped by "+row.Reason
		x.Logger.Debug("⏭ "+x.Name+" dropped", "rule", row.Reason)
		return true
	case "reschedule":
		out.state, out.nextAttempt = stateDeferred, x.Attempt
		out.nextAt = time.Now().Add(time.Duration(row.DelaySeconds * float64(time.Second)))
		x.Logger.Debug("⏭ "+x.Name+" delayed", "rule", row.Reason, "until", out.nextAt)
		return true
	}
	return false
}

// decide turns how a run ended into the outcome to record, applying the
// retry and perpetual policies.
func (w *Worker) decide(out *outcome, f *inflight, reg *registration, err error, result json.RawMessage) {
	x, policy := f.x, reg.policy
	now := time.Now()
	if err != nil {
		out.err = err.Error()
	}
	switch {
	case f.wasCancelled():
		// A cancel ends the task and, for a perpetual one, its chain; a
		// handler that ignored it completed.
		out.state, out.result = stateCancelled, nil
		if err == nil {
			out.state, out.result = stateCompleted, result
		}
		return
	case err == nil:
		out.state, out.result = stateCompleted, result
	case policy.retryAllowed(x.Attempt) && !isArgsError(err):
		out.state, out.nextAttempt = stateRescheduled, x.Attempt+1
		out.nextAt = now.Add(policy.backoff(x.Attempt))
		var req *RetryRequest
		if errors.As(err, &req) {
			out.nextAt = req.when(now)
		}
		return
	default:
		out.state = stateFailed
	}
	if x.perpetual == nil {
		return
	}
	// A perpetual task goes on after success and after its last failure.
	p := x.perpetual
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cancel || (w.atMost != nil && w.reachedAtMost(x.Key)) {
		return
	}
	out.state, out.result, out.nextAttempt, out.nextArgs = stateRescheduled, nil, 1, p.args
	switch {
	case !p.at.IsZero():
		out.nextAt = p.at
	case p.hasAfter:
		out.nextAt = now.Add(p.after)
	case policy.schedule != nil:
		out.nextAt = policy.nextCron(x.started)
	default:
		out.nextAt = x.started.Add(p.every)
	}
}

func isArgsError(err error) bool {
	var ae *ArgsError
	return errors.As(err, &ae)
}

// call runs the handler, turning a panic into an error.
func (w *Worker) call(ctx context.Context, reg *registration, x *execution) (result json.RawMessage, err error) {
	defer func() {
		if p := recover(); p != nil {
			x.Logger.Error("task panicked", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			result, err = nil, fmt.Errorf("panic: %v", p)
		}
	}()
	return reg.run(ctx, x)
}

// withMiddleware runs fn inside the worker's middleware, first outermost.
func (w *Worker) withMiddleware(ctx context.Context, info *Info, fn func(context.Context) error) error {
	for i := len(w.cfg.Middleware) - 1; i >= 0; i-- {
		mw, next := w.cfg.Middleware[i], fn
		fn = func(ctx context.Context) error { return mw(ctx, info, next) }
	}
	return fn(ctx)
}

// exceedsAtMost counts a claim of key and reports whether it is past the
// key's RunAtMost limit.
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

// reachedAtMost reports whether key has run as often as RunAtMost allows, so
// that its chain must not go on.
func (w *Worker) reachedAtMost(key string) bool {
	limit, ok := w.atMost[key]
	if !ok {
		return false
	}
	w.atMostMu.Lock()
	defer w.atMostMu.Unlock()
	return w.runs[key] >= limit
}
