package worker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/shadows-go/shadows/queue"
	"github.com/shadows-go/shadows/strike"
	"github.com/shadows-go/shadows/worker"
)

func TestMetricsAndTraces(t *testing.T) {
	t.Parallel()
	b := setup(t)
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()); _ = mp.Shutdown(context.Background()) })
	b.cfg.Queue.TracerProvider, b.cfg.Queue.MeterProvider = tp, mp
	q, err := queue.New(b.pool, b.cfg.Queue)
	require.NoError(t, err)

	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error {
		if task.Args.Text == "flaky" && task.Attempt == 1 {
			return errors.New("first attempt fails")
		}
		return nil
	}, worker.Policy{Retry: worker.Retry{Attempts: 2}})
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Tick]) error {
		if task.Args.Step >= 1 {
			task.Perpetual.Cancel()
		}
		return task.Perpetual.Perpetuate(Tick{Step: task.Args.Step + 1})
	}, worker.Policy{Perpetual: &worker.Perpetual{}})

	// The producer's own trace.
	ctx, parent := tp.Tracer("app").Start(t.Context(), "handle request")
	_, err = q.Add(ctx, Echo{Text: "ok"}, &queue.AddOpts{Key: "ok"})
	require.NoError(t, err)
	parent.End()
	_, err = q.Add(t.Context(), Echo{Text: "flaky"}, &queue.AddOpts{Key: "flaky"})
	require.NoError(t, err)
	_, err = q.Add(t.Context(), Tick{}, &queue.AddOpts{Key: "tick"})
	require.NoError(t, err)
	_, err = q.Strike(t.Context(), strike.Rule{Task: "echo", Param: "text", Op: strike.Eq, Value: "no"})
	require.NoError(t, err)
	_, err = q.Add(t.Context(), Echo{Text: "no"}, nil)
	require.NoError(t, err)
	b.runUntilFinished(t)

	// Spans: one per add and strike, one consumer span per run, linked to
	// the add's trace.
	var adds, runs int
	var linked, failedRun bool
	for _, s := range spans.Ended() {
		switch {
		case s.Name() == "shadows.add":
			adds++
			require.Equal(t, trace.SpanKindProducer, s.SpanKind())
		case s.Name() == "echo" || s.Name() == "tick":
			runs++
			require.Equal(t, trace.SpanKindConsumer, s.SpanKind())
			for _, l := range s.Links() {
				if l.SpanContext.TraceID() == parent.SpanContext().TraceID() {
					linked = true
				}
			}
			if s.Status().Code == codes.Error {
				failedRun = true
			}
		}
	}
	require.Equal(t, 4, adds)
	require.Equal(t, 5, runs, "ok, flaky twice, tick twice")
	require.True(t, linked, "the run's span links to the trace that added it")
	require.True(t, failedRun, "a failed attempt's span is an error")

	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(t.Context(), &rm))
	sums := map[string]int64{}
	names := map[string]bool{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			names[m.Name] = true
			if s, ok := m.Data.(metricdata.Sum[int64]); ok {
				for _, dp := range s.DataPoints {
					sums[m.Name] += dp.Value
					_, hasKey := dp.Attributes.Value(attribute.Key("shadows.key"))
					require.False(t, hasKey, "the key is never a label")
					v, _ := dp.Attributes.Value("shadows.queue")
					require.Equal(t, b.q.Name(), v.AsString())
				}
			}
		}
	}
	require.EqualValues(t, 3, sums["shadows.tasks.added"])
	require.EqualValues(t, 3, sums["shadows.tasks.scheduled"])
	require.EqualValues(t, 1, sums["shadows.tasks.struck"])
	require.EqualValues(t, 5, sums["shadows.tasks.started"])
	require.EqualValues(t, 5, sums["shadows.tasks.completed"])
	require.EqualValues(t, 4, sums["shadows.tasks.succeeded"])
	require.EqualValues(t, 1, sums["shadows.tasks.failed"])
	require.EqualValues(t, 1, sums["shadows.tasks.retried"])
	require.EqualValues(t, 1, sums["shadows.tasks.perpetuated"])
	require.Zero(t, sums["shadows.tasks.running"])
	require.True(t, names["shadows.task.duration"])
	require.True(t, names["shadows.task.lateness"])
}

// A batch streamed in with COPY (generated keys, no strikes) carries the
// producer's trace as an Add does: each run's span links to it, whether
// the batch's rows take the run_at column (an entry names a time) or not.
func TestAddManyCarriesTheTrace(t *testing.T) {
	t.Parallel()
	b := setup(t)
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	b.cfg.Queue.TracerProvider = tp
	q, err := queue.New(b.pool, b.cfg.Queue)
	require.NoError(t, err)
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error { return nil }, worker.Policy{})

	ctx, parent := tp.Tracer("app").Start(t.Context(), "import")
	_, err = q.AddMany(ctx, []queue.Entry{{Args: Echo{Text: "a"}}})
	require.NoError(t, err)
	_, err = q.AddMany(ctx, []queue.Entry{
		{Args: Echo{Text: "b"}}, {Args: Echo{Text: "c"}, When: time.Now().Add(-time.Second)},
	})
	require.NoError(t, err)
	parent.End()
	b.runUntilFinished(t)

	linked := 0
	for _, s := range spans.Ended() {
		if s.Name() != "echo" {
			continue
		}
		for _, l := range s.Links() {
			if l.SpanContext.TraceID() == parent.SpanContext().TraceID() {
				linked++
			}
		}
	}
	require.Equal(t, 3, linked, "every run links to the trace that added it")
}

func TestDepthGauges(t *testing.T) {
	t.Parallel()
	b := setup(t)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	b.cfg.Queue.MeterProvider = mp
	worker.MustRegister(b.reg, func(ctx context.Context, task *worker.Task[Echo]) error { return nil }, worker.Policy{})
	_, err := b.q.Add(t.Context(), Echo{}, &queue.AddOpts{When: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	b.start(t)
	var scheduled int64
	eventually(t, "the gauges report", func() bool {
		var rm metricdata.ResourceMetrics
		require.NoError(t, reader.Collect(t.Context(), &rm))
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				if g, ok := m.Data.(metricdata.Gauge[int64]); ok && m.Name == "shadows.schedule.depth" {
					for _, dp := range g.DataPoints {
						scheduled = dp.Value
						return true
					}
				}
			}
		}
		return false
	})
	require.EqualValues(t, 1, scheduled)
}
