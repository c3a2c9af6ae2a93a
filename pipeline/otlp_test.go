package pipeline_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/pipeline"
)

// otlpReceiver is an OTLP/HTTP trace receiver in the test process: it
// decodes every export request and keeps the spans with their service.name.
type otlpReceiver struct {
	mu       sync.Mutex
	spans    []*tracepb.Span
	services []string
	paths    []string
}

func (r *otlpReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var export collectortrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &export); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.paths = append(r.paths, req.URL.Path)
	for _, rs := range export.GetResourceSpans() {
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				r.services = append(r.services, a.GetValue().GetStringValue())
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			r.spans = append(r.spans, ss.GetSpans()...)
		}
	}
	r.mu.Unlock()
	out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (r *otlpReceiver) byName() map[string]*tracepb.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]*tracepb.Span{}
	for _, s := range r.spans {
		out[s.GetName()] = s
	}
	return out
}

// Not parallel: it sets the process environment.
func TestPipeline_exports_spans_over_OTLP_HTTP_configured_by_the_environment(t *testing.T) {
	recv := &otlpReceiver{}
	srv := httptest.NewServer(recv)
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	t.Setenv("OTEL_SERVICE_NAME", "eventpipe-otlp-test")
	t.Setenv("OTEL_TRACES_SAMPLER", "always_on")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "20") // ms: export soon, not after 5 s

	h := newHarness(t, nil, nil) // no tracer provider option: the pipeline reads OTEL_*
	res := h.watch("task-results")
	h.publish(ev("otlp-1", "order.created"))
	res.waitFor(t, 1)

	require.Eventually(t, func() bool {
		got := recv.byName()
		return got["process business-events"] != nil && got["process schedule-tasks"] != nil
	}, 10*time.Second, 20*time.Millisecond, "spans exported to the OTLP receiver")
	got := recv.byName()
	trigger, exec := got["process business-events"], got["process schedule-tasks"]
	assert.Equal(t, trigger.GetTraceId(), exec.GetTraceId())
	assert.Equal(t, trigger.GetSpanId(), exec.GetParentSpanId())
	assert.Equal(t, tracepb.Span_SPAN_KIND_CONSUMER, exec.GetKind())
	recv.mu.Lock()
	defer recv.mu.Unlock()
	assert.Contains(t, recv.services, "eventpipe-otlp-test")
	assert.Contains(t, recv.paths, "/v1/traces")
}

// Not parallel: it sets the process environment.
func TestPipeline_refuses_to_start_with_an_invalid_OTEL_setting(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
	t.Setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
	t.Setenv("OTEL_TRACES_SAMPLER_ARG", "ten percent")
	cfg := config.Default()
	cfg.HTTP.Addr = "127.0.0.1:0"
	_, err := pipeline.New(cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1, got "ten percent"`)
}
