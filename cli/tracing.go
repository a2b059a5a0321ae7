package cli

// Traces: when the standard OTEL_EXPORTER_OTLP_ENDPOINT (or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, the commands send shadows'
// spans there with OTLP over HTTP (protobuf).

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// flushTimeout bounds sending the last spans when a command ends.
const flushTimeout = 3 * time.Second

// tracingWanted reports whether the environment asks for OTLP traces: an
// OTLP endpoint is set, and neither OTEL_SDK_DISABLED nor
// OTEL_TRACES_EXPORTER=none turns them off.
func tracingWanted() (bool, error) {
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return false, nil
	}
	if strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true") {
		return false, nil
	}
	switch e := strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER")); e {
	case "", "otlp":
	case "none":
		return false, nil
	default:
		return false, fmt.Errorf("$OTEL_TRACES_EXPORTER %q: this command exports traces with otlp only (or none)", e)
	}
	env := "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	p := strings.TrimSpace(os.Getenv(env))
	if p == "" {
		env = "OTEL_EXPORTER_OTLP_PROTOCOL"
		p = strings.TrimSpace(os.Getenv(env))
	}
	if p != "" && p != "http/protobuf" {
		return false, fmt.Errorf("$%s %q: this command exports traces with http/protobuf only", env, p)
	}
	return true, nil
}

// tracing returns the tracer provider for the queue's spans: an OTLP
// exporter's when the environment asks for one, made on first use and
// flushed when the command ends, else nil (the OpenTelemetry global, or
// the one Config.Worker.Queue names). OpenTelemetry's errors, such as a
// failed export, go to logger, or as a warning line to stderr when logger
// is nil. The OpenTelemetry globals are left alone.
func (a *app) tracing(ctx context.Context, stderr io.Writer, logger *slog.Logger) (*sdktrace.TracerProvider, error) {
	if a.tp != nil {
		return a.tp, nil
	}
	wanted, err := tracingWanted()
	if err != nil || !wanted {
		return nil, err
	}
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		if logger != nil {
			logger.Warn("OpenTelemetry", "error", err)
		} else {
			fmt.Fprintf(stderr, "%s: warning: %s\n", a.cfg.Name, oneLine(err.Error()))
		}
	}))
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", a.cfg.Name)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
		resource.WithTelemetrySDK(),
	)
	if err != nil && res == nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	a.tp = sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return a.tp, nil
}

// flushTracing sends the spans not yet sent and stops the tracer provider,
// if the command made one.
func (a *app) flushTracing(stderr io.Writer) {
	if a.tp == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	if err := a.tp.Shutdown(ctx); err != nil {
		fmt.Fprintf(stderr, "%s: warning: sending traces: %s\n", a.cfg.Name, oneLine(err.Error()))
	}
	a.tp = nil
}
