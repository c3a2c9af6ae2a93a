package pipeline

import (
	"log/slog"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/middleware"
)

// Option customises a Pipeline built by New.
type Option func(*options)

type options struct {
	executors  []namedExecutor
	logger     *slog.Logger
	middleware []message.HandlerMiddleware
	handlers   []extraHandler
	broker     broker.Broker
	registry   *prometheus.Registry
	dedup      middleware.DedupStore
	tracer     *trace.TracerProvider
}

type namedExecutor struct {
	name string
	exec executor.Executor
}

type extraHandler struct {
	name, topic string
	fn          message.NoPublishHandlerFunc
}

// WithExecutor registers e for tasks of taskType name, next to the built-in
// shell, http and log. New fails if the name is taken.
func WithExecutor(name string, e executor.Executor) Option {
	return func(o *options) { o.executors = append(o.executors, namedExecutor{name, e}) }
}

// WithLogger sets the logger; the default is built from the log config.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithMiddleware adds Watermill middleware around every handler, outside
// eventpipe's own chain (it sees each delivery once, with its final outcome).
func WithMiddleware(m ...message.HandlerMiddleware) Option {
	return func(o *options) { o.middleware = append(o.middleware, m...) }
}

// WithHandler adds a handler of your own consuming topic (for example
// task-results), wrapped in the same middleware chain as eventpipe's
// handlers: retries, poison topic <topic>.dlq, metrics.
func WithHandler(name, topic string, h message.NoPublishHandlerFunc) Option {
	return func(o *options) { o.handlers = append(o.handlers, extraHandler{name, topic, h}) }
}

// WithBroker runs the pipeline on b instead of the broker the config names.
// The pipeline does not close b; its owner does.
func WithBroker(b broker.Broker) Option {
	return func(o *options) { o.broker = b }
}

// WithMetricsRegistry registers the pipeline's metrics on reg instead of a
// registry of its own, e.g. to serve them with your other metrics.
func WithMetricsRegistry(reg *prometheus.Registry) Option {
	return func(o *options) { o.registry = reg }
}

// WithDedupStore replaces the in-memory task de-duplication store.
func WithDedupStore(s middleware.DedupStore) Option {
	return func(o *options) { o.dedup = s }
}

// WithTracerProvider traces the pipeline with tp (for example an SDK
// provider of your own, or tracetest's in tests) instead of the one the
// OTEL_* environment describes. The pipeline does not shut tp down; a nil
// or no-op tp turns tracing off.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tracer = &tp }
}
