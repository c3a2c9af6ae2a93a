package pipeline_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/middleware"
	"github.com/eventpipe/eventpipe/pipeline"
	"github.com/eventpipe/eventpipe/task"
)

const tracedRules = `taskTriggerRules:
  - ruleId: "audit"
    eventType: "order.created"
    taskName: "audit-${eventId}"
    taskType: "log"
    parameters: {message: "order ${payload.orderId}"}
  - ruleId: "notify"
    eventType: "order.shipped"
    taskName: "notify-${eventId}"
    taskType: "http"
    parameters: {url: "%[1]s/hook", method: "POST", body: {order: "${payload.orderId}"}}
  - ruleId: "script"
    eventType: "order.packed"
    taskName: "script-${eventId}"
    taskType: "shell"
    parameters: {command: "%[2]s", args: ["TRACEPARENT"]}
  - ruleId: "flaky"
    eventType: "flaky.test"
    taskName: "flaky"
    taskType: "flaky"
  - ruleId: "broken"
    eventType: "broken.test"
    taskName: "broken"
    taskType: "broken"
`

// A foreign producer's trace: trace id and the span id of its send span.
const (
	foreignTraceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	foreignSpanID      = "00f067aa0ba902b7"
	foreignTraceparent = "00-" + foreignTraceID + "-" + foreignSpanID + "-01"
)

// tracedHarness is a pipeline on the embedded broker traced into an
// in-memory span recorder, with its logs captured.
type tracedHarness struct {
	*harness
	spans *tracetest.SpanRecorder
	logs  *syncBuffer
	hook  *httptest.Server
	hooks chan http.Header
}

func newTracedHarness(t *testing.T, execs map[string]executor.Executor) *tracedHarness {
	t.Helper()
	th := &tracedHarness{spans: tracetest.NewSpanRecorder(), logs: &syncBuffer{}, hooks: make(chan http.Header, 10)}
	th.hook = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		th.hooks <- r.Header.Clone()
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(th.hook.Close)
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(th.spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	dir := t.TempDir()
	rulesFile := filepath.Join(dir, "rules.yaml")
	require.NoError(t, os.WriteFile(rulesFile, fmt.Appendf(nil, tracedRules, th.hook.URL, printenvPath(t)), 0o600))
	cfg := config.Default()
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Rules.File = rulesFile
	cfg.Retry.InitialInterval = time.Millisecond
	cfg.Retry.MaxInterval = 5 * time.Millisecond
	cfg.ShutdownTimeout = 2 * time.Second
	cfg.Executors.HTTP.AllowedHosts = []string{"127.0.0.1"}
	cfg.Executors.HTTP.AllowPrivateNetworks = true
	cfg.Executors.Shell.AllowedCommands = []string{printenvPath(t)}
	b := broker.NewEmbedded(cfg.Broker.Embedded, watermill.NopLogger{})
	t.Cleanup(func() { _ = b.Close() })
	logger := slog.New(slog.NewJSONHandler(th.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts := []pipeline.Option{pipeline.WithBroker(b), pipeline.WithLogger(logger), pipeline.WithTracerProvider(tp)}
	for _, name := range []string{"flaky", "broken"} {
		e, ok := execs[name]
		if !ok {
			e = executor.Func(func(context.Context, *task.Task) ([]byte, error) { return nil, nil })
		}
		opts = append(opts, pipeline.WithExecutor(name, e))
	}
	p, err := pipeline.New(cfg, opts...)
	require.NoError(t, err)
	h := &harness{t: t, p: p, broker: b, done: make(chan error, 1)}
	var ctx context.Context
	ctx, h.cancel = context.WithCancel(t.Context())
	go func() { h.done <- p.Run(ctx) }()
	<-p.Running()
	t.Cleanup(func() { h.cancel(); <-h.done })
	th.harness = h
	return th
}

// post sends one event to the ingest endpoint with header traceparent, if set.
func (th *tracedHarness) post(t *testing.T, body, traceparent string) {
	t.Helper()
	addr := th.p.Addr(t.Context())
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+addr+"/api/v1/events", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if traceparent != "" {
		req.Header.Set("traceparent", traceparent)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Less(t, resp.StatusCode, 300, "ingest answered %d", resp.StatusCode)
}

// waitSpans waits until a span named name has ended and returns every
// ended span.
func (th *tracedHarness) waitSpans(t *testing.T, names ...string) []sdktrace.ReadOnlySpan {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, n := range names {
			if findSpan(th.spans.Ended(), n) == nil {
				return false
			}
		}
		return true
	}, 5*time.Second, 5*time.Millisecond, "spans %v", names)
	return th.spans.Ended()
}

func findSpan(spans []sdktrace.ReadOnlySpan, name string) sdktrace.ReadOnlySpan {
	for _, s := range spans {
		if s.Name() == name {
			return s
		}
	}
	return nil
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	out := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		out[kv.Key] = kv.Value
	}
	return out
}

// traceparentOf is the W3C traceparent naming s as the parent.
func traceparentOf(s sdktrace.ReadOnlySpan) string {
	return "00-" + s.SpanContext().TraceID().String() + "-" + s.SpanContext().SpanID().String() + "-01"
}

func TestPipeline_traces_one_event_as_one_trace_continuing_the_request(t *testing.T) {
	t.Parallel()
	th := newTracedHarness(t, nil)
	res := th.watch("task-results")
	th.post(t, `{"messageId":"tr-1","eventType":"order.created","payload":{"orderId":"o-1"}}`, foreignTraceparent)

	spans := th.waitSpans(t, "POST /api/v1/events", "process business-events", "process schedule-tasks")
	ingest := findSpan(spans, "POST /api/v1/events")
	trigger := findSpan(spans, "process business-events")
	exec := findSpan(spans, "process schedule-tasks")

	// One trace, continuing the caller's: ingest ← trigger ← executor.
	for _, s := range []sdktrace.ReadOnlySpan{ingest, trigger, exec} {
		assert.Equal(t, foreignTraceID, s.SpanContext().TraceID().String(), s.Name())
	}
	assert.Equal(t, foreignSpanID, ingest.Parent().SpanID().String())
	assert.True(t, ingest.Parent().IsRemote())
	assert.Equal(t, trace.SpanKindServer, ingest.SpanKind())
	assert.Equal(t, ingest.SpanContext().SpanID(), trigger.Parent().SpanID(), "trigger is a child of the ingest request")
	assert.Equal(t, trigger.SpanContext().SpanID(), exec.Parent().SpanID(), "executor is a child of the trigger")

	ta := attrs(trigger)
	assert.Equal(t, trace.SpanKindConsumer, trigger.SpanKind())
	assert.Equal(t, "embedded", ta["messaging.system"].AsString())
	assert.Equal(t, "process", ta["messaging.operation.type"].AsString())
	assert.Equal(t, "business-events", ta["messaging.destination.name"].AsString())
	assert.Equal(t, "tr-1", ta["messaging.message.id"].AsString())
	assert.Equal(t, "trigger", ta[middleware.AttrHandler].AsString())
	assert.Equal(t, codes.Unset, trigger.Status().Code)

	ea := attrs(exec)
	assert.Equal(t, trace.SpanKindConsumer, exec.SpanKind())
	assert.Equal(t, "schedule-tasks", ea["messaging.destination.name"].AsString())
	assert.Equal(t, "audit", ea[middleware.AttrRuleID].AsString())
	assert.Equal(t, "log", ea[middleware.AttrTaskType].AsString())
	assert.NotEmpty(t, ea[middleware.AttrTaskID].AsString())
	assert.Equal(t, ea[middleware.AttrTaskID].AsString(), ea["messaging.message.id"].AsString())
	assert.Equal(t, "tr-1", ea[middleware.AttrCorrelationID].AsString())
	assert.NotContains(t, ea, middleware.AttrAttempts, "set only after a retry")
	assert.Equal(t, codes.Unset, exec.Status().Code)

	// The result message carries the executor span's context onwards.
	out := res.waitFor(t, 1)
	assert.Equal(t, traceparentOf(exec), out[0].Metadata.Get("traceparent"))

	// The duration histograms link to the trace: an exemplar in OpenMetrics.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+th.p.Addr(t.Context())+"/metrics", nil)
	require.NoError(t, err)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	scrape, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	assert.Regexp(t, `message_processing_time_seconds_bucket\{handler="executor",le="[^"]+"\} 1 # \{trace_id="`+foreignTraceID+`"\}`, string(scrape))
	assert.Regexp(t, `task_execution_duration_seconds_bucket\{task_type="log",le="[^"]+"\} 1 # \{trace_id="`+foreignTraceID+`"\}`, string(scrape))

	// Log lines inside a delivery carry its trace and span ids.
	assert.Contains(t, th.logs.String(), `"trace_id":"`+foreignTraceID+`"`)
	assert.Contains(t, th.logs.String(), `"span_id":"`+exec.SpanContext().SpanID().String()+`"`)
}

func TestPipeline_continues_a_foreign_traceparent_from_message_metadata(t *testing.T) {
	t.Parallel()
	th := newTracedHarness(t, nil)
	// A foreign producer's message: no Watermill headers, a traceparent header.
	m := message.NewMessage("foreign-1", []byte(`{"eventType":"order.created","payload":{"orderId":"o-2"}}`))
	m.Metadata.Set("traceparent", foreignTraceparent)
	require.NoError(t, th.broker.Publisher().Publish("business-events", m))

	spans := th.waitSpans(t, "process business-events", "process schedule-tasks")
	trigger := findSpan(spans, "process business-events")
	exec := findSpan(spans, "process schedule-tasks")
	assert.Equal(t, foreignTraceID, trigger.SpanContext().TraceID().String())
	assert.Equal(t, foreignSpanID, trigger.Parent().SpanID().String())
	assert.True(t, trigger.Parent().IsRemote())
	assert.Equal(t, trigger.SpanContext().SpanID(), exec.Parent().SpanID())
	assert.Equal(t, foreignTraceID, exec.SpanContext().TraceID().String())
}

func TestPipeline_http_task_request_carries_traceparent_of_its_span(t *testing.T) {
	t.Parallel()
	th := newTracedHarness(t, nil)
	th.post(t, `{"messageId":"tr-http","eventType":"order.shipped","payload":{"orderId":"o-3"}}`, "")

	var got http.Header
	select {
	case got = <-th.hooks:
	case <-time.After(5 * time.Second):
		t.Fatal("the http task never called the hook")
	}
	exec := findSpan(th.waitSpans(t, "process schedule-tasks"), "process schedule-tasks")
	assert.Equal(t, "notify", attrs(exec)[middleware.AttrRuleID].AsString())
	assert.Equal(t, "http", attrs(exec)[middleware.AttrTaskType].AsString())
	assert.Equal(t, traceparentOf(exec), got.Get("traceparent"))
}

func TestPipeline_shell_task_gets_TRACEPARENT_of_its_span(t *testing.T) {
	t.Parallel()
	th := newTracedHarness(t, nil)
	res := th.watch("task-results")
	th.post(t, `{"messageId":"tr-shell","eventType":"order.packed","payload":{"orderId":"o-4"}}`, "")

	out := results(t, res.waitFor(t, 1))
	require.Equal(t, task.StatusSucceeded, out[0].Status, out[0].Error)
	exec := findSpan(th.waitSpans(t, "process schedule-tasks"), "process schedule-tasks")
	assert.Equal(t, traceparentOf(exec), strings.TrimSpace(out[0].Output))
}

func TestPipeline_span_records_retries_and_the_poison_reason(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	flaky := executor.Func(func(context.Context, *task.Task) ([]byte, error) {
		if calls.Add(1) <= 2 {
			return nil, fmt.Errorf("temporary glitch %d", calls.Load())
		}
		return nil, nil
	})
	broken := executor.Func(func(context.Context, *task.Task) ([]byte, error) {
		return nil, fmt.Errorf("bad input: %w", errPermanentForTest)
	})
	th := newTracedHarness(t, map[string]executor.Executor{"flaky": flaky, "broken": broken})
	th.post(t, `{"messageId":"tr-flaky","eventType":"flaky.test"}`, "")
	th.post(t, `{"messageId":"tr-broken","eventType":"broken.test"}`, "")

	require.Eventually(t, func() bool { return len(execSpans(th.spans.Ended())) == 2 }, 5*time.Second, 5*time.Millisecond)
	byRule := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range execSpans(th.spans.Ended()) {
		byRule[attrs(s)[middleware.AttrRuleID].AsString()] = s
	}

	f := byRule["flaky"]
	require.NotNil(t, f)
	assert.EqualValues(t, 3, attrs(f)[middleware.AttrAttempts].AsInt64())
	var retries []string
	for _, e := range f.Events() {
		if e.Name == middleware.EventRetry {
			retries = append(retries, eventAttr(e, "exception.message"))
		}
	}
	assert.Equal(t, []string{"temporary glitch 1", "temporary glitch 2"}, retries)
	assert.Equal(t, codes.Unset, f.Status().Code)

	b := byRule["broken"]
	require.NotNil(t, b)
	assert.Equal(t, codes.Error, b.Status().Code)
	assert.Contains(t, b.Status().Description, "poisoned (retries_exhausted)")
	var poisoned []string
	for _, e := range b.Events() {
		if e.Name == middleware.EventPoisoned {
			poisoned = append(poisoned, eventAttr(e, string(middleware.AttrPoisonReason)))
		}
	}
	assert.Equal(t, []string{middleware.ReasonRetriesExhausted}, poisoned)
}

// errPermanentForTest is a plain (transient) error: retried, then poisoned.
var errPermanentForTest = fmt.Errorf("always fails")

func execSpans(spans []sdktrace.ReadOnlySpan) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() == "process schedule-tasks" {
			out = append(out, s)
		}
	}
	return out
}

func eventAttr(e sdktrace.Event, key string) string {
	for _, kv := range e.Attributes {
		if string(kv.Key) == key {
			return kv.Value.AsString()
		}
	}
	return ""
}

func TestPipeline_untraced_by_default_adds_no_trace_context(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, nil) // no OTEL_* exporter in the test environment
	res := h.watch("task-results")
	h.publish(ev("plain-1", "order.created"))
	out := res.waitFor(t, 1)
	assert.Empty(t, out[0].Metadata.Get("traceparent"))
}

// printenvPath is the absolute path of printenv, the shell task's program.
func printenvPath(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("printenv")
	require.NoError(t, err, "the shell task test needs printenv")
	return path
}

// syncBuffer is a bytes.Buffer safe for the handler's concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
