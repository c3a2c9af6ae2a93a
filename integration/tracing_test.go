package integration_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventpipe/eventpipe/middleware"
	"github.com/eventpipe/eventpipe/pipeline"
)

// A foreign producer's trace: its trace id and the span id of its send.
const (
	foreignTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	foreignSpanID  = "00f067aa0ba902b7"
)

// TestTracing_one_event_is_one_trace_across_broker_hops publishes an event
// with a foreign producer's traceparent header on each broker and checks the
// trace: foreign send ← trigger (events topic) ← executor (tasks topic), with
// the result message carrying the executor span's traceparent. The context
// crosses the broker only as message headers.
func TestTracing_one_event_is_one_trace_across_broker_hops(t *testing.T) {
	t.Parallel()
	for _, tgt := range targets() {
		t.Run(tgt.name, func(t *testing.T) {
			t.Parallel()
			tgt.provider.require(t)
			cfg := newConfig(t, tgt)
			b := tgt.open(t, cfg)
			spans := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
			t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			p, err := pipeline.New(cfg, pipeline.WithBroker(b), pipeline.WithLogger(testLogger()),
				pipeline.WithTracerProvider(tp), pipeline.WithExecutor("record", newRecorder()),
				pipeline.WithExecutor("flaky", newRecorder()), pipeline.WithExecutor("broken", newRecorder()))
			require.NoError(t, err)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- p.Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })
			select {
			case <-p.Running():
			case <-time.After(30 * time.Second):
				t.Fatal("pipeline not running after 30s")
			}
			res := watchTopic(t, b, cfg.Topics.Results)

			m := message.NewMessage("tr-"+testID(), []byte(ev("tr-1", "order.created")))
			m.Metadata.Set("traceparent", "00-"+foreignTraceID+"-"+foreignSpanID+"-01")
			require.NoError(t, b.Publisher().Publish(cfg.Topics.Events, m))

			out := res.waitFor(t, 1, waitLong)
			triggerName, execName := "process "+cfg.Topics.Events, "process "+cfg.Topics.Tasks
			var trigger, exec sdktrace.ReadOnlySpan
			require.Eventually(t, func() bool {
				trigger, exec = nil, nil
				for _, s := range spans.Ended() {
					switch s.Name() {
					case triggerName:
						trigger = s
					case execName:
						exec = s
					}
				}
				return trigger != nil && exec != nil
			}, waitLong, 10*time.Millisecond)

			assert.Equal(t, foreignTraceID, trigger.SpanContext().TraceID().String())
			assert.Equal(t, foreignSpanID, trigger.Parent().SpanID().String())
			assert.True(t, trigger.Parent().IsRemote(), "continued from the message headers")
			assert.Equal(t, foreignTraceID, exec.SpanContext().TraceID().String())
			assert.Equal(t, trigger.SpanContext().SpanID(), exec.Parent().SpanID())
			assert.True(t, exec.Parent().IsRemote(), "the task carried the trigger span in its headers")
			for _, s := range []sdktrace.ReadOnlySpan{trigger, exec} {
				assert.Equal(t, trace.SpanKindConsumer, s.SpanKind())
				assert.Equal(t, wantSystem(tgt.name), spanAttr(s, "messaging.system"), s.Name())
			}
			assert.Equal(t, cfg.Topics.Tasks, spanAttr(exec, "messaging.destination.name"))
			assert.Equal(t, "audit", spanAttr(exec, middleware.AttrRuleID))
			assert.Equal(t, "record", spanAttr(exec, middleware.AttrTaskType))
			assert.NotEmpty(t, spanAttr(exec, middleware.AttrTaskID))
			assert.Equal(t, "00-"+foreignTraceID+"-"+exec.SpanContext().SpanID().String()+"-01",
				out[0].Metadata.Get("traceparent"), "the result continues the trace")
		})
	}
}

func wantSystem(kind string) string {
	if kind == "amqp" {
		return "rabbitmq"
	}
	return kind
}

func spanAttr(s sdktrace.ReadOnlySpan, key attribute.Key) string {
	for _, kv := range s.Attributes() {
		if kv.Key == key {
			return kv.Value.Emit()
		}
	}
	return ""
}
