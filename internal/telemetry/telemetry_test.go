package telemetry

import (
	"context"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace/noop"
)

// globalInstalled records that a test installed an SDK behind the global
// tracer provider.
var globalInstalled atomic.Bool

// Run spans are skipped only while nothing could record them, and start
// being made as soon as an SDK is installed behind the global provider.
func TestRunSpansOnlyWhenSomethingRecords(t *testing.T) {
	if globalInstalled.Swap(true) {
		// The default global provider hands over to the first provider
		// ever installed, once per process.
		t.Skip("an SDK was installed behind the global provider by an earlier run in this process (-count > 1)")
	}
	if !recordsNothing(otel.GetTracerProvider()) {
		t.Fatal("the default global provider is not recognised: run spans would be made for nothing")
	}
	if !recordsNothing(noop.NewTracerProvider()) {
		t.Fatal("a no-op provider is not recognised")
	}
	exporter := tracetest.NewInMemoryExporter()
	sdk := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter))
	defer func() { _ = sdk.Shutdown(context.Background()) }()
	if recordsNothing(sdk) {
		t.Fatal("an SDK provider was taken for a no-op one")
	}

	tel := New("q", nil, nil) // the global provider, no SDK yet
	// The same provider passed explicitly: it still delegates to an SDK
	// installed later.
	explicitGlobal := New("q", otel.GetTracerProvider(), nil)
	for _, tt := range []*Telemetry{tel, explicitGlobal} {
		_, span := tt.StartRun(context.Background(), "task", nil, "k", 1)
		if _, none := span.(noop.Span); !none {
			t.Fatal("a run span was made with no SDK installed")
		}
		span.End()
	}

	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(sdk)
	defer otel.SetTracerProvider(prev)
	for _, tt := range []*Telemetry{tel, explicitGlobal} {
		_, span := tt.StartRun(context.Background(), "task", nil, "k", 1)
		span.End()
	}
	if got := len(exporter.GetSpans()); got != 2 {
		t.Fatalf("%d spans recorded after an SDK was installed, want 2", got)
	}

	explicit := New("q", sdk, nil)
	_, span := explicit.StartRun(context.Background(), "task", nil, "k", 1)
	span.End()
	if got := len(exporter.GetSpans()); got != 3 {
		t.Fatalf("%d spans recorded with an explicit SDK provider, want 3", got)
	}
	silent := New("q", noop.NewTracerProvider(), nil)
	if _, span := silent.StartRun(context.Background(), "task", nil, "k", 1); span != nil {
		if _, none := span.(noop.Span); !none {
			t.Fatal("a run span was made for a no-op provider")
		}
	}
}
