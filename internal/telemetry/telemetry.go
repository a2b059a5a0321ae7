// Package telemetry holds shadows' OpenTelemetry instruments: the counters,
// histograms and gauges of docket's metrics, and the spans of adds, cancels,
// strikes and task runs. Providers default to the global ones, so an
// application that configures OpenTelemetry gets shadows' signals with no
// further wiring; polling and other internal queries make no spans.
package telemetry

import (
	"context"
	"encoding/json"
	"reflect"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Scope is the instrumentation scope name.
const Scope = "github.com/shadows-go/shadows"

// Attribute keys. The key of a task is never a label: it would explode the
// metrics' cardinality.
const (
	QueueKey  = attribute.Key("shadows.queue")
	TaskKey   = attribute.Key("shadows.task")
	WorkerKey = attribute.Key("shadows.worker")
)

// Telemetry is one queue's instruments. It is safe for concurrent use.
type Telemetry struct {
	tracer trace.Tracer
	meter  metric.Meter
	queue  attribute.KeyValue
	// global: the tracer is OpenTelemetry's default global provider's,
	// which an application may install an SDK behind at any time. silent:
	// the configured provider is a no-op one.
	global, silent bool

	Added, Replaced, Scheduled, Cancelled, Struck metric.Int64Counter
	Started, Redelivered, Superseded, Completed   metric.Int64Counter
	Failed, Succeeded, Retried, Perpetuated       metric.Int64Counter
	Running                                       metric.Int64UpDownCounter
	Duration, Lateness                            metric.Float64Histogram
}

// New makes the instruments for queue from the given providers, or the
// global ones when nil.
func New(queue string, tp trace.TracerProvider, mp metric.MeterProvider) *Telemetry {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	// OpenTelemetry's default global provider delegates to whatever SDK is
	// installed later, so whether it records is asked at each run.
	global := isDefaultGlobal(tp)
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	t := &Telemetry{tracer: tp.Tracer(Scope), meter: mp.Meter(Scope), queue: QueueKey.String(queue),
		global: global, silent: isNoop(tp)}
	counter := func(name, desc string) metric.Int64Counter {
		c, _ := t.meter.Int64Counter("shadows.tasks."+name, metric.WithDescription(desc), metric.WithUnit("{task}"))
		return c // on error OpenTelemetry returns a working no-op
	}
	t.Added = counter("added", "Tasks added or replaced, whatever their disposition, except struck ones.")
	t.Replaced = counter("replaced", "Tasks replaced.")
	t.Scheduled = counter("scheduled", "Tasks stored to run (disposition scheduled).")
	t.Cancelled = counter("cancelled", "Cancel calls.")
	t.Struck = counter("struck", "Tasks a strike kept out (at add) or cancelled (at claim).")
	t.Started = counter("started", "Runs started.")
	t.Redelivered = counter("redelivered", "Runs started again after their worker's lease lapsed.")
	t.Superseded = counter("superseded", "Runs whose outcome was not recorded because their task was replaced meanwhile.")
	t.Completed = counter("completed", "Runs ended, however they ended.")
	t.Failed = counter("failed", "Runs that failed (a retry may follow).")
	t.Succeeded = counter("succeeded", "Runs that succeeded.")
	t.Retried = counter("retried", "Failed runs rescheduled for another attempt.")
	t.Perpetuated = counter("perpetuated", "Runs of perpetual tasks that scheduled their next run.")
	t.Running, _ = t.meter.Int64UpDownCounter("shadows.tasks.running", metric.WithDescription("Runs in progress."), metric.WithUnit("{task}"))
	// Tasks take from microseconds to hours: buckets from 1ms to 1h.
	buckets := metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
		1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
	t.Duration, _ = t.meter.Float64Histogram("shadows.task.duration", metric.WithDescription("How long runs took."), metric.WithUnit("s"), buckets)
	t.Lateness, _ = t.meter.Float64Histogram("shadows.task.lateness", metric.WithDescription("How long after their due time runs started."), metric.WithUnit("s"), buckets)
	return t
}

// Attrs returns the queue label with the given others, as a measurement
// option.
func (t *Telemetry) Attrs(kv ...attribute.KeyValue) metric.MeasurementOption {
	return metric.WithAttributeSet(t.set(kv...))
}

func (t *Telemetry) set(kv ...attribute.KeyValue) attribute.Set {
	return attribute.NewSet(append([]attribute.KeyValue{t.queue}, kv...)...)
}

// Depths registers the queue-depth and schedule-depth gauges, read with
// read only when metrics are collected. They describe the whole queue, so
// they carry only the queue label: every worker reports the same value, to
// be aggregated with max, not sum. unregister removes them.
func (t *Telemetry) Depths(read func(context.Context) (queued, scheduled int64, ok bool)) (unregister func()) {
	queued, _ := t.meter.Int64ObservableGauge("shadows.queue.depth", metric.WithDescription("Tasks due and waiting for a worker."), metric.WithUnit("{task}"))
	scheduled, _ := t.meter.Int64ObservableGauge("shadows.schedule.depth", metric.WithDescription("Tasks scheduled for the future."), metric.WithUnit("{task}"))
	attrs := metric.WithAttributeSet(t.set())
	reg, err := t.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		if q, s, ok := read(ctx); ok {
			o.ObserveInt64(queued, q, attrs)
			o.ObserveInt64(scheduled, s, attrs)
		}
		return nil
	}, queued, scheduled)
	if err != nil {
		return func() {}
	}
	var once sync.Once
	return func() { once.Do(func() { _ = reg.Unregister() }) }
}

// StartSpan starts a producer-side span (add, replace, cancel, strike,
// restore) as a child of ctx's span.
func (t *Telemetry) StartSpan(ctx context.Context, name string, kv ...attribute.KeyValue) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(append([]attribute.KeyValue{t.queue}, kv...)...))
}

// EndSpan records err, if any, on span and ends it.
func EndSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

var propagator = propagation.TraceContext{}

// Inject returns ctx's trace context as JSON to store with a task, or nil
// when ctx carries no valid span.
func Inject(ctx context.Context) json.RawMessage {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return nil
	}
	carrier := propagation.MapCarrier{}
	propagator.Inject(ctx, carrier)
	raw, err := json.Marshal(carrier)
	if err != nil {
		return nil
	}
	return raw
}

// StartRun starts the consumer span of a task run, linked to the span that
// added the task when its trace context was stored. The span starts with
// its kind only; its attributes and link are added once it is known to be
// recorded, so a sampler sees the span name and kind, not the attributes.
func (t *Telemetry) StartRun(ctx context.Context, task string, stored json.RawMessage, key string, attempt int) (context.Context, trace.Span) {
	if t.silent || t.global && recordsNothing(otel.GetTracerProvider()) {
		// Nothing could record the span (no SDK installed yet, or a no-op
		// provider); starting one would still allocate a span and a
		// context per run.
		return ctx, noSpan
	}
	ctx, span := t.tracer.Start(ctx, task, consumerSpan)
	if !span.IsRecording() {
		// Nothing records it (no SDK, or not sampled): the attributes and
		// the link would be built for nothing, once per run.
		return ctx, span
	}
	span.SetAttributes(t.queue, TaskKey.String(task), attribute.String("shadows.key", key), attribute.Int("shadows.attempt", attempt))
	if len(stored) > 0 {
		carrier := propagation.MapCarrier{}
		if json.Unmarshal(stored, &carrier) == nil {
			if sc := trace.SpanContextFromContext(propagator.Extract(context.Background(), carrier)); sc.IsValid() {
				span.AddLink(trace.Link{SpanContext: sc})
			}
		}
	}
	return ctx, span
}

// consumerSpan is the start option of every run span, made once.
var consumerSpan = trace.WithSpanKind(trace.SpanKindConsumer)

// noSpan is the span of a run nothing could record.
var noSpan trace.Span = noop.Span{}

// recordsNothing reports whether no span from tp can ever be recorded: a
// no-op provider, or OpenTelemetry's default global provider while no SDK
// is installed behind it.
func recordsNothing(tp trace.TracerProvider) bool {
	return isNoop(tp) || isDefaultGlobal(tp)
}

func isNoop(tp trace.TracerProvider) bool {
	switch tp.(type) {
	case noop.TracerProvider, *noop.TracerProvider:
		return true
	}
	return false
}

// isDefaultGlobal recognises OpenTelemetry's own global provider by its
// type's name: should a release rename it, spans are simply started as
// before.
func isDefaultGlobal(tp trace.TracerProvider) bool {
	typ := reflect.TypeOf(tp)
	return typ != nil && typ.Kind() == reflect.Pointer &&
		typ.Elem().Name() == "tracerProvider" && typ.Elem().PkgPath() == "go.opentelemetry.io/otel/internal/global"
}
