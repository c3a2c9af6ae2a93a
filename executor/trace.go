package executor

import (
	"context"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// appendTraceEnv adds TRACEPARENT (and TRACESTATE) of the task's span, when
// it is traced, so a traced program continues the trace: the variable names
// OpenTelemetry SDKs and otel-cli read for W3C trace context.
func appendTraceEnv(ctx context.Context, env []string) []string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return env
	}
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, carrier)
	if v := carrier["traceparent"]; v != "" {
		env = append(env, "TRACEPARENT="+v)
	}
	if v := carrier["tracestate"]; v != "" {
		env = append(env, "TRACESTATE="+v)
	}
	return env
}
