package middleware

import (
	"context"
	"errors"

	"github.com/ThreeDotsLabs/watermill/message"
	wmw "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventpipe/eventpipe/task"
	"github.com/eventpipe/eventpipe/tracing"
)

// Span attributes of eventpipe's own, next to the messaging conventions.
const (
	AttrHandler       = attribute.Key("eventpipe.handler")
	AttrRuleID        = attribute.Key("eventpipe.rule_id")
	AttrTaskID        = attribute.Key("eventpipe.task_id")
	AttrTaskType      = attribute.Key("eventpipe.task_type")
	AttrCorrelationID = attribute.Key("eventpipe.correlation_id")
	AttrAttempts      = attribute.Key("eventpipe.attempts")
	AttrPoisonReason  = attribute.Key("eventpipe.poison.reason")
)

// Span events: each retry, and the hand-over to the poison topic.
const (
	EventRetry    = "retry"
	EventPoisoned = "poisoned"
)

// Tracing starts one consumer span per delivery of a message, named
// "process <topic>" after the OpenTelemetry messaging conventions. The span
// continues the trace context found in the message metadata (traceparent
// from the previous hop, or from a foreign producer's headers), so one
// event is one trace across every broker hop. It carries the messaging
// attributes (system, destination, message id) and eventpipe's (handler,
// rule id, task id, task type, correlation id, and attempts when a retry
// happened: absent means one attempt); retries are span
// events (see Retry) and a poisoned message sets the span status to Error
// with a "poisoned" event naming the reason. Messages the handler returns
// get the span's context in their metadata; handlers that publish
// themselves call tracing.Inject with the message context.
//
// The message context holds the span for the layers inside, so logs carry
// trace_id/span_id and the metrics observed inside get the trace id as an
// exemplar. handler names the handler (eventpipe.handler; Router's names
// carry an instance suffix), system is messaging.system (kafka, rabbitmq, ...).
func Tracing(tracer trace.Tracer, handler, system string) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			topic := message.SubscribeTopicFromCtx(msg.Context())
			parent := tracing.Extract(msg.Context(), msg.Metadata)
			attrs := make([]attribute.KeyValue, 0, 10)
			attrs = append(attrs,
				semconv.MessagingSystemKey.String(system),
				semconv.MessagingOperationTypeProcess,
				semconv.MessagingOperationName("process"),
				semconv.MessagingDestinationName(topic),
				semconv.MessagingMessageID(msg.UUID),
				AttrHandler.String(handler),
			)
			attrs = appendMeta(attrs, AttrCorrelationID, wmw.MessageCorrelationID(msg))
			attrs = appendMeta(attrs, AttrRuleID, msg.Metadata.Get(task.MetaRuleID))
			attrs = appendMeta(attrs, AttrTaskID, msg.Metadata.Get(task.MetaTaskID))
			attrs = appendMeta(attrs, AttrTaskType, msg.Metadata.Get(task.MetaTaskType))
			ctx, span := tracer.Start(parent, "process "+topic, consumerSpan, trace.WithAttributes(attrs...))
			defer span.End()
			msg.SetContext(ctx)
			d := track(msg)

			out, err := h(msg)
			if n := d.attempts.Load(); n > 1 {
				// Set only after a retry: absent means one attempt, and
				// the common case skips regrowing the span's attributes.
				span.SetAttributes(AttrAttempts.Int(int(n)))
			}
			switch {
			case d.poisonReason != "":
				reason := msg.Metadata.Get(wmw.ReasonForPoisonedKey)
				span.AddEvent(EventPoisoned, trace.WithAttributes(AttrPoisonReason.String(d.poisonReason),
					attribute.String("exception.message", reason)))
				span.SetStatus(codes.Error, "poisoned ("+d.poisonReason+"): "+reason)
			case err != nil && !errors.Is(err, context.Canceled):
				span.RecordError(err)
				span.SetStatus(codes.Error, err.Error())
			}
			for _, m := range out {
				tracing.Inject(ctx, m)
			}
			return out, err
		}
	}
}

// consumerSpan is built once: an option per span would allocate.
var consumerSpan = trace.WithSpanKind(trace.SpanKindConsumer)

// appendMeta appends key=value when value is set.
func appendMeta(attrs []attribute.KeyValue, key attribute.Key, value string) []attribute.KeyValue {
	if value == "" {
		return attrs
	}
	return append(attrs, key.String(value))
}

// spanRetry records a retry as an event on the delivery's span, if any.
func spanRetry(ctx context.Context, retry int, err error) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.AddEvent(EventRetry, trace.WithAttributes(attribute.Int("eventpipe.retry", retry),
		attribute.String("exception.message", err.Error())))
}
