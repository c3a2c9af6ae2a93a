package metrics

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"
)

// spanCtx is a context holding a remote span of trace id tid, sampled or not.
func spanCtx(t *testing.T, tid string, sampled bool) context.Context {
	t.Helper()
	traceID, err := trace.TraceIDFromHex(tid)
	require.NoError(t, err)
	spanID, err := trace.SpanIDFromHex("00f067aa0ba902b7")
	require.NoError(t, err)
	var flags trace.TraceFlags
	if sampled {
		flags = trace.FlagsSampled
	}
	return trace.ContextWithSpanContext(context.Background(),
		trace.NewSpanContext(trace.SpanContextConfig{TraceID: traceID, SpanID: spanID, TraceFlags: flags}))
}

// exemplars returns the trace_id exemplar of every bucket of the one
// histogram named name ("" where a bucket has none).
func exemplars(t *testing.T, reg *prometheus.Registry, name string) map[float64]string {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	out := map[float64]string{}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		require.Len(t, f.GetMetric(), 1)
		for _, b := range f.GetMetric()[0].GetHistogram().GetBucket() {
			out[b.GetUpperBound()] = exemplarTraceID(b.GetExemplar())
		}
	}
	return out
}

func exemplarTraceID(e *dto.Exemplar) string {
	for _, l := range e.GetLabel() {
		if l.GetName() == ExemplarTraceID {
			return l.GetValue()
		}
	}
	return ""
}

func TestHistograms_carry_the_trace_id_of_a_sampled_span_as_exemplar(t *testing.T) {
	t.Parallel()
	const (
		fast  = "4bf92f3577b34da6a3ce929d0e0e4736"
		fast2 = "5bf92f3577b34da6a3ce929d0e0e4736"
		slow  = "6bf92f3577b34da6a3ce929d0e0e4736"
		unsam = "7bf92f3577b34da6a3ce929d0e0e4736"
	)
	reg := prometheus.NewRegistry()
	m := New(reg)
	h := m.Handler("executor")
	h.ProcessedContext(context.Background(), 5*time.Second, false)      // no span: no exemplar
	h.ProcessedContext(spanCtx(t, unsam, false), 20*time.Second, false) // not sampled: no exemplar
	h.ProcessedContext(spanCtx(t, fast, true), 300*time.Microsecond, false)
	h.ProcessedContext(spanCtx(t, fast2, true), 300*time.Microsecond, false) // same bucket within a second: kept
	h.ProcessedContext(spanCtx(t, slow, true), 2*time.Second, false)         // a spike: its own bucket
	m.TaskExecutedContext(spanCtx(t, slow, true), "http", "SUCCEEDED", 3*time.Second)

	got := exemplars(t, reg, "message_processing_time_seconds")
	assert.Equal(t, fast, got[.0005])
	assert.Equal(t, slow, got[5])
	assert.Equal(t, "", got[10], "the observation without a span has no exemplar")
	assert.Equal(t, "", got[30], "the unsampled observation has no exemplar")
	assert.Equal(t, slow, exemplars(t, reg, "task_execution_duration_seconds")[5])
}
