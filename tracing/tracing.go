// Package tracing sets up OpenTelemetry tracing for eventpipe from the
// standard OTEL_* environment variables and carries W3C trace context
// (traceparent, tracestate, baggage) in Watermill message metadata, which
// every broker turns into message headers.
//
// Tracing is off unless an exporter is configured: with no OTEL_* exporter
// setting, Setup returns a no-op provider and eventpipe adds no tracing
// work to any message.
package tracing

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ScopeName is the instrumentation scope of eventpipe's spans.
const ScopeName = "github.com/eventpipe/eventpipe"

// DefaultServiceName is service.name unless OTEL_SERVICE_NAME or
// OTEL_RESOURCE_ATTRIBUTES names another.
const DefaultServiceName = "eventpipe"

// Propagator is the context propagation eventpipe uses on every hop: W3C
// Trace Context and W3C Baggage.
var Propagator propagation.TextMapPropagator = propagation.NewCompositeTextMapPropagator(
	propagation.TraceContext{}, propagation.Baggage{})

// Provider is the process's tracer provider and how to flush it.
type Provider struct {
	tp       trace.TracerProvider
	shutdown func(context.Context) error
}

// NewProvider wraps a tracer provider the caller owns (it is not shut down
// by Shutdown). A nil or no-op tp means tracing off.
func NewProvider(tp trace.TracerProvider) *Provider {
	if _, isNoop := tp.(noop.TracerProvider); isNoop {
		tp = nil
	}
	return &Provider{tp: tp}
}

// Enabled reports whether spans are recorded and exported. When false,
// callers skip tracing altogether.
func (p *Provider) Enabled() bool { return p != nil && p.tp != nil }

// TracerProvider returns the provider; a no-op one when tracing is off.
func (p *Provider) TracerProvider() trace.TracerProvider {
	if !p.Enabled() {
		return noop.NewTracerProvider()
	}
	return p.tp
}

// Tracer returns eventpipe's tracer.
func (p *Provider) Tracer() trace.Tracer { return p.TracerProvider().Tracer(ScopeName) }

// Shutdown flushes the spans not exported yet and stops the exporter, if
// Setup created it. It is safe on a disabled provider.
func (p *Provider) Shutdown(ctx context.Context) error {
	if p == nil || p.shutdown == nil {
		return nil
	}
	if err := p.shutdown(ctx); err != nil {
		return fmt.Errorf("shut down tracing: %w", err)
	}
	return nil
}

// The standard variables Setup reads itself; the exporters read the other
// OTEL_EXPORTER_OTLP_* (headers, timeout, TLS, compression) and the batch
// span processor the OTEL_BSP_* ones.
const (
	envSDKDisabled      = "OTEL_SDK_DISABLED"
	envTracesExporter   = "OTEL_TRACES_EXPORTER"
	envEndpoint         = "OTEL_EXPORTER_OTLP_ENDPOINT"
	envTracesEndpoint   = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	envProtocol         = "OTEL_EXPORTER_OTLP_PROTOCOL"
	envTracesProtocol   = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	envTracesSampler    = "OTEL_TRACES_SAMPLER"
	envTracesSamplerArg = "OTEL_TRACES_SAMPLER_ARG"
)

// Setup builds the tracer provider the OTEL_* environment describes.
// Tracing is on when OTEL_TRACES_EXPORTER=otlp, or when it is unset and an
// OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or _TRACES_ENDPOINT) is set;
// OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none turn it off. The
// protocol is http/protobuf (default) or grpc; the sampler follows
// OTEL_TRACES_SAMPLER / _ARG (default parentbased_always_on). Spans leave
// through a batch span processor. Every invalid value is an error naming
// the variable and the value.
//
// Unlike the spec's default exporter (otlp), eventpipe exports nothing when
// nothing is configured: tracing costs nothing unless asked for. That
// default, and errors for bad values, are why this picks the exporter itself
// rather than using contrib's autoexport, which also exports by default; its
// release for otel v1.44 would pull in the metric and log exporters too.
func Setup(ctx context.Context) (*Provider, error) {
	on, err := exporterConfigured()
	if err != nil || !on {
		return &Provider{}, err
	}
	// The SDK reads OTEL_TRACES_SAMPLER too, but only logs a bad value and
	// falls back to sampling everything; a typo should stop the start.
	sampler, err := samplerFromEnv()
	if err != nil {
		return nil, err
	}
	exp, err := newExporter(ctx)
	if err != nil {
		return nil, err
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", DefaultServiceName)),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES: last, so they win
	)
	if err != nil {
		return nil, fmt.Errorf("tracing resource from OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res), sdktrace.WithSampler(sampler))
	return &Provider{tp: tp, shutdown: tp.Shutdown}, nil
}

// exporterConfigured reports whether the environment asks for a trace exporter.
func exporterConfigured() (bool, error) {
	if v := strings.TrimSpace(os.Getenv(envSDKDisabled)); v != "" {
		disabled, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("%s must be true or false, got %q", envSDKDisabled, v)
		}
		if disabled {
			return false, nil
		}
	}
	switch v := strings.ToLower(strings.TrimSpace(os.Getenv(envTracesExporter))); v {
	case "none":
		return false, nil
	case "otlp":
		return true, nil
	case "":
		return os.Getenv(envEndpoint) != "" || os.Getenv(envTracesEndpoint) != "", nil
	default:
		return false, fmt.Errorf("%s must be otlp or none, got %q", envTracesExporter, v)
	}
}

// newExporter builds the OTLP exporter of the configured protocol; the
// exporter reads its endpoint, headers, timeout and TLS settings itself.
func newExporter(ctx context.Context) (sdktrace.SpanExporter, error) {
	name, protocol := envTracesProtocol, os.Getenv(envTracesProtocol)
	if protocol == "" {
		name, protocol = envProtocol, os.Getenv(envProtocol)
	}
	var (
		exp sdktrace.SpanExporter
		err error
	)
	switch protocol {
	case "", "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("%s must be http/protobuf or grpc, got %q", name, protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("otlp trace exporter (%s): %w", cmp.Or(protocol, "http/protobuf"), err)
	}
	return exp, nil
}

// samplerFromEnv is the sampler OTEL_TRACES_SAMPLER and _ARG name, with the
// values and defaults of the OpenTelemetry specification.
func samplerFromEnv() (sdktrace.Sampler, error) {
	name := strings.ToLower(strings.TrimSpace(os.Getenv(envTracesSampler)))
	arg, hasArg := os.LookupEnv(envTracesSamplerArg)
	ratio := func() (sdktrace.Sampler, error) {
		if !hasArg || strings.TrimSpace(arg) == "" {
			return sdktrace.TraceIDRatioBased(1), nil
		}
		r, err := strconv.ParseFloat(strings.TrimSpace(arg), 64)
		if err != nil || r < 0 || r > 1 {
			return nil, fmt.Errorf("%s must be a number from 0 to 1, got %q", envTracesSamplerArg, arg)
		}
		return sdktrace.TraceIDRatioBased(r), nil
	}
	switch name {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "traceidratio":
		return ratio()
	case "parentbased_traceidratio":
		s, err := ratio()
		if err != nil {
			return nil, err
		}
		return sdktrace.ParentBased(s), nil
	default:
		return nil, errors.New(envTracesSampler + " must be one of always_on, always_off, traceidratio, " +
			"parentbased_always_on, parentbased_always_off, parentbased_traceidratio, got " + strconv.Quote(name))
	}
}

// MetadataCarrier adapts Watermill message metadata to a
// propagation.TextMapCarrier. Brokers carry metadata as message headers
// (Kafka record headers, AMQP headers), so the context crosses every hop.
type MetadataCarrier message.Metadata

// Get returns the value of key.
func (c MetadataCarrier) Get(key string) string { return c[key] }

// Set sets key to value.
func (c MetadataCarrier) Set(key, value string) { c[key] = value }

// Keys lists the keys.
func (c MetadataCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Inject writes the trace context of ctx (traceparent, tracestate, baggage)
// into msg's metadata. Without a valid span in ctx it writes nothing and
// allocates nothing, so it is free when tracing is off.
func Inject(ctx context.Context, msg *message.Message) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	if msg.Metadata == nil {
		msg.Metadata = message.Metadata{}
	}
	Propagator.Inject(ctx, MetadataCarrier(msg.Metadata))
}

// Extract returns ctx with the remote trace context found in md, if any.
func Extract(ctx context.Context, md message.Metadata) context.Context {
	return Propagator.Extract(ctx, MetadataCarrier(md))
}

// TraceID returns the id of ctx's sampled trace, or "" when there is none:
// the value of the trace_id log attribute and metric exemplar label.
func TraceID(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || !sc.IsSampled() {
		return ""
	}
	return sc.TraceID().String()
}
