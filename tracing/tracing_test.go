package tracing

import (
	"bytes"
	"context"
	"log/slog"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// otelVars are every variable Setup reads; each case starts with all unset.
var otelVars = []string{envSDKDisabled, envTracesExporter, envEndpoint, envTracesEndpoint, envProtocol,
	envTracesProtocol, envTracesSampler, envTracesSamplerArg}

func TestSetup_reads_the_standard_OTEL_variables(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		enabled bool
		wantErr string
	}{
		{name: "nothing configured is off", env: nil, enabled: false},
		{name: "an endpoint turns it on", env: map[string]string{envEndpoint: "http://127.0.0.1:4318"}, enabled: true},
		{name: "a traces endpoint turns it on", env: map[string]string{envTracesEndpoint: "http://127.0.0.1:4318/v1/traces"}, enabled: true},
		{name: "exporter otlp turns it on", env: map[string]string{envTracesExporter: "otlp"}, enabled: true},
		{name: "grpc protocol", env: map[string]string{envEndpoint: "http://127.0.0.1:4317", envProtocol: "grpc"}, enabled: true},
		{name: "traces protocol wins", env: map[string]string{envEndpoint: "http://127.0.0.1:4317", envProtocol: "bogus", envTracesProtocol: "grpc"}, enabled: true},
		{name: "exporter none wins over an endpoint", env: map[string]string{envEndpoint: "http://127.0.0.1:4318", envTracesExporter: "none"}, enabled: false},
		{name: "sdk disabled wins", env: map[string]string{envEndpoint: "http://127.0.0.1:4318", envSDKDisabled: "true"}, enabled: false},
		{name: "ratio sampler", env: map[string]string{envEndpoint: "http://x:4318", envTracesSampler: "parentbased_traceidratio", envTracesSamplerArg: "0.25"}, enabled: true},
		{name: "bad exporter", env: map[string]string{envTracesExporter: "zipkin"}, wantErr: `OTEL_TRACES_EXPORTER must be otlp or none, got "zipkin"`},
		{name: "bad protocol", env: map[string]string{envEndpoint: "http://x:4318", envProtocol: "http/json"}, wantErr: `OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or grpc, got "http/json"`},
		{name: "bad sdk disabled", env: map[string]string{envSDKDisabled: "maybe"}, wantErr: `OTEL_SDK_DISABLED must be true or false, got "maybe"`},
		{name: "bad sampler", env: map[string]string{envEndpoint: "http://x:4318", envTracesSampler: "sometimes"}, wantErr: `OTEL_TRACES_SAMPLER must be one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio, got "sometimes"`},
		{name: "bad sampler arg", env: map[string]string{envEndpoint: "http://x:4318", envTracesSampler: "traceidratio", envTracesSamplerArg: "1.5"}, wantErr: `OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1, got "1.5"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, v := range otelVars {
				t.Setenv(v, "")
			}
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			p, err := Setup(t.Context())
			if tt.wantErr != "" {
				require.EqualError(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			t.Cleanup(func() { _ = p.Shutdown(context.Background()) })
			assert.Equal(t, tt.enabled, p.Enabled())
			if !tt.enabled {
				assert.IsType(t, noop.TracerProvider{}, p.TracerProvider())
			}
		})
	}
}

func TestNewProvider_treats_nil_and_noop_as_off(t *testing.T) {
	t.Parallel()
	assert.False(t, NewProvider(nil).Enabled())
	assert.False(t, NewProvider(noop.NewTracerProvider()).Enabled())
	assert.True(t, NewProvider(sdktrace.NewTracerProvider()).Enabled())
	assert.NoError(t, NewProvider(nil).Shutdown(t.Context()))
}

func TestInject_and_Extract_round_trip_through_message_metadata(t *testing.T) {
	t.Parallel()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tracetest.NewSpanRecorder()))
	ctx, span := tp.Tracer("test").Start(t.Context(), "send")
	defer span.End()

	msg := message.NewMessage("m1", nil)
	Inject(ctx, msg)
	want := "00-" + span.SpanContext().TraceID().String() + "-" + span.SpanContext().SpanID().String() + "-01"
	assert.Equal(t, want, msg.Metadata.Get("traceparent"))

	got := trace.SpanContextFromContext(Extract(context.Background(), msg.Metadata))
	assert.True(t, got.IsRemote())
	assert.Equal(t, span.SpanContext().TraceID(), got.TraceID())
	assert.Equal(t, span.SpanContext().SpanID(), got.SpanID())
	assert.Equal(t, span.SpanContext().TraceID().String(), TraceID(ctx))
}

func TestInject_without_a_span_writes_and_allocates_nothing(t *testing.T) {
	msg := message.NewMessage("m1", nil)
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() { Inject(ctx, msg) })
	assert.Zero(t, allocs)
	assert.Empty(t, msg.Metadata)
	assert.Empty(t, TraceID(ctx))
}

func TestLogHandler_adds_trace_and_span_ids_only_inside_a_span(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := slog.New(NewLogHandler(slog.NewJSONHandler(&buf, nil))).With("handler_name", "executor").WithGroup("g")
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(tracetest.NewSpanRecorder()))
	ctx, span := tp.Tracer("test").Start(t.Context(), "process")
	defer span.End()

	log.InfoContext(ctx, "inside")
	assert.Contains(t, buf.String(), `"trace_id":"`+span.SpanContext().TraceID().String()+`"`)
	assert.Contains(t, buf.String(), `"span_id":"`+span.SpanContext().SpanID().String()+`"`)
	assert.Contains(t, buf.String(), `"handler_name":"executor"`)

	buf.Reset()
	log.InfoContext(context.Background(), "outside")
	assert.NotContains(t, buf.String(), "trace_id")
}
