package cli

// The worker's HTTP endpoints: Prometheus metrics (--metrics-port) and the
// health check (--healthcheck-port).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
)

// shutdownTimeout bounds stopping the HTTP servers and the meter provider.
const shutdownTimeout = 5 * time.Second

// secondBuckets are the bucket boundaries of the histograms of durations
// and lateness, in seconds: from 5ms to an hour.
var secondBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}

// portValue is a flag holding a TCP port, 0 for none.
type portValue struct{ n *int }

func (v portValue) String() string {
	if v.n == nil || *v.n == 0 {
		return "0"
	}
	return strconv.Itoa(*v.n)
}

func (v portValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q is not a TCP port (1 to 65535, or 0 for none)", s)
	}
	*v.n = n
	return nil
}

func (portValue) Type() string { return "port" }

// newMetrics returns a meter provider, and the handler that serves its
// metrics, with Go's and the process's, in Prometheus' formats.
func newMetrics(ctx context.Context, service string) (*sdkmetric.MeterProvider, http.Handler, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	exp, err := otelprom.New(
		otelprom.WithRegisterer(reg),
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("metrics: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", service)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
		resource.WithTelemetrySDK(),
	)
	if err != nil && res == nil {
		return nil, nil, fmt.Errorf("metrics: %w", err)
	}
	// The SDK's default buckets (0 to 10000) suit milliseconds; shadows
	// records seconds.
	seconds := sdkmetric.NewView(
		sdkmetric.Instrument{Name: "shadows.task.*", Kind: sdkmetric.InstrumentKindHistogram},
		sdkmetric.Stream{Aggregation: sdkmetric.AggregationExplicitBucketHistogram{Boundaries: secondBuckets}},
	)
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res), sdkmetric.WithView(seconds))
	return mp, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), nil
}

// healthHandler answers 200 "ok" while healthy reports true, 503 otherwise.
func healthHandler(healthy func() bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if healthy() {
			_, _ = w.Write([]byte("ok\n"))
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("unhealthy: the worker is not claiming tasks or has not reached the database lately\n"))
	})
}

// endpoints are the HTTP servers of a worker.
type endpoints struct {
	logger  *slog.Logger
	servers []*http.Server
	wg      sync.WaitGroup
}

// serve starts serving mux on every interface at port.
func (e *endpoints) serve(flag string, port int, mux *http.ServeMux) error {
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return fmt.Errorf("--%s: %w", flag, err)
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(e.logger.Handler(), slog.LevelWarn),
	}
	e.servers = append(e.servers, srv)
	e.wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			e.logger.Error("HTTP server failed", "address", ln.Addr().String(), "error", err)
		}
	})
	return nil
}

// close shuts the servers down, letting requests under way finish.
func (e *endpoints) close() {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	for _, srv := range e.servers {
		if err := srv.Shutdown(ctx); err != nil {
			_ = srv.Close()
		}
	}
	e.wg.Wait()
}
