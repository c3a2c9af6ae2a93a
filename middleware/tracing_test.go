package middleware

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/task"
)

func TestTracing_spans_each_delivery_and_propagates_to_returned_messages(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		handler    message.HandlerFunc
		wantStatus codes.Code
		wantEvents []string
		wantOut    bool
	}{
		{
			name: "success returns messages carrying the span",
			handler: func(msg *message.Message) ([]*message.Message, error) {
				return []*message.Message{message.NewMessage("out-1", nil)}, nil
			},
			wantStatus: codes.Unset,
			wantOut:    true,
		},
		{
			name: "permanent failure is poisoned: status Error, poisoned event",
			handler: func(msg *message.Message) ([]*message.Message, error) {
				return nil, permanent.Wrap(errors.New("bad task"))
			},
			wantStatus: codes.Error,
			wantEvents: []string{EventPoisoned},
		},
		{
			name: "transient failures are retried: retry events, then poisoned",
			handler: func(msg *message.Message) ([]*message.Message, error) {
				return nil, errors.New("glitch")
			},
			wantStatus: codes.Error,
			wantEvents: []string{EventRetry, EventRetry, EventRetry, EventPoisoned},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			spans := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
			pubsub := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
			t.Cleanup(func() { _ = pubsub.Close() })
			logger := watermill.NewCaptureLogger()
			chain, err := Chain(ChainConfig{HandlerName: "executor", PoisonPublisher: pubsub, PoisonTopic: poisonTopic,
				Retry: fastRetry, Tracer: tp.Tracer("test"), MessagingSystem: "kafka", Logger: logger})
			require.NoError(t, err)

			in := message.NewMessage("task-1", nil)
			in.Metadata.Set(task.MetaTaskID, "task-1")
			in.Metadata.Set(task.MetaRuleID, "rule-1")
			in.Metadata.Set(task.MetaTaskType, "http")
			in.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
			in.SetContext(context.Background())
			out, err := Apply(tt.handler, chain)(in)
			require.NoError(t, err, "success, or poisoned (acked)")

			require.Len(t, spans.Ended(), 1)
			s := spans.Ended()[0]
			assert.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", s.SpanContext().TraceID().String())
			assert.Equal(t, "00f067aa0ba902b7", s.Parent().SpanID().String())
			assert.Equal(t, tt.wantStatus, s.Status().Code)
			var events []string
			for _, e := range s.Events() {
				events = append(events, e.Name)
			}
			assert.Equal(t, tt.wantEvents, events)
			got := map[string]string{}
			for _, kv := range s.Attributes() {
				got[string(kv.Key)] = kv.Value.Emit()
			}
			assert.Equal(t, "kafka", got["messaging.system"])
			assert.Equal(t, "executor", got[string(AttrHandler)])
			assert.Equal(t, "rule-1", got[string(AttrRuleID)])
			assert.Equal(t, "task-1", got[string(AttrTaskID)])
			assert.Equal(t, "http", got[string(AttrTaskType)])
			if slices.Contains(tt.wantEvents, EventPoisoned) {
				poisoned := logger.Captured()[watermill.ErrorLogLevel]
				require.Len(t, poisoned, 1)
				assert.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", poisoned[0].Fields["trace_id"], "the poison log line links to the trace")
			}
			if tt.wantOut {
				require.Len(t, out, 1)
				assert.Equal(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-"+s.SpanContext().SpanID().String()+"-01",
					out[0].Metadata.Get("traceparent"))
			}
		})
	}
}

func TestChain_without_a_tracer_adds_no_tracing_layer(t *testing.T) {
	t.Parallel()
	pubsub := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
	t.Cleanup(func() { _ = pubsub.Close() })
	without, err := Chain(ChainConfig{HandlerName: "h", PoisonPublisher: pubsub, PoisonTopic: poisonTopic})
	require.NoError(t, err)
	spans := tracetest.NewSpanRecorder()
	with, err := Chain(ChainConfig{HandlerName: "h", PoisonPublisher: pubsub, PoisonTopic: poisonTopic,
		Tracer: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)).Tracer("t")})
	require.NoError(t, err)
	assert.Len(t, with, len(without)+1)
}
