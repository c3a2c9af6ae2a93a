package pipeline_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/eventpipe/eventpipe/pipeline"
)

// BenchmarkEndToEndTracing measures the embedded end-to-end path of
// BenchmarkEndToEnd (event → rule → task → log executor → result, metrics
// on) with tracing off and on, in the same run:
//
//	embedded/tracing_off  the default: no OTEL_* exporter, so no tracing layer
//	embedded/tracing_on   every event sampled (always_on): two consumer spans
//	                      per event through the SDK's batch span processor into
//	                      an exporter that drops them (no network in the figure)
//
// ns/op is per event; `make bench` prints on/off as a speed ratio.
func BenchmarkEndToEndTracing(b *testing.B) {
	b.Run("embedded/tracing_off", func(b *testing.B) { benchPipeline(b, true) })
	b.Run("embedded/tracing_on", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()),
			sdktrace.WithBatcher(tracetest.NewNoopExporter()))
		defer func() { _ = tp.Shutdown(context.Background()) }()
		benchPipeline(b, true, pipeline.WithTracerProvider(tp))
	})
}

// processCPU is the CPU time this process used so far (user + system):
// on a shared machine it is a steadier cost per event than wall time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
