// Package middleware builds the Watermill middleware chain every eventpipe
// handler runs in, and holds our own middleware: metrics, attempt counting,
// the poison filter and task de-duplication.
package middleware

import (
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmw "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/metrics"
)

// ChainConfig configures Chain.
type ChainConfig struct {
	// HandlerName labels metrics. Required.
	HandlerName string
	// PoisonPublisher and PoisonTopic receive messages that cannot succeed. Required.
	PoisonPublisher message.Publisher
	PoisonTopic     string
	// Retry configures retries of transient errors.
	Retry config.Retry
	// Timeout bounds each attempt; 0 means no timeout.
	Timeout time.Duration
	// Metrics records message metrics; nil records nothing.
	Metrics *metrics.Metrics
	// Logger logs retries and duplicates; nil logs nothing.
	Logger watermill.LoggerAdapter
	// Dedup, when set, skips messages whose DedupKey was already handled
	// successfully. DedupKey is required with Dedup.
	Dedup    DedupStore
	DedupKey func(*message.Message) string
	// Tracer, when set, starts a span per delivery (see Tracing), with
	// MessagingSystem as messaging.system; nil traces nothing and costs nothing.
	Tracer          trace.Tracer
	MessagingSystem string
}

// Chain returns the middleware of one handler, outermost first, for
// Router.AddHandler(...).AddMiddleware(chain...):
//
//	[Tracing] → Metrics → CorrelationID → PoisonQueue → [Dedup] → Retry → Timeout → Recoverer → handler
//
// Why each sits where it does:
//   - Tracing (only with a Tracer) is outermost so its span covers the whole
//     delivery, retries, backoff and the poison publish included, and every
//     layer inside sees the span in the message context: Metrics records the
//     trace id as an exemplar, log lines carry trace_id, produced messages
//     carry its traceparent. It adds nothing when tracing is off.
//   - Metrics is outermost (but for Tracing) so it times and counts the whole delivery (retries
//     and backoff included) and sees the final outcome. It also creates the
//     per-delivery attempt counter Attempt reads, which must live outside
//     Retry so it survives Retry's context reset.
//   - CorrelationID copies the correlation id to every produced message,
//     including those of a successful retry.
//   - PoisonQueue sits outside Retry: inside, it would swallow the first
//     error and Retry would never run (watermill#645, #580). Its filter never
//     poisons context.Canceled or anything interrupted by shutdown: those
//     messages are nacked and redelivered (#446).
//   - Dedup sits inside PoisonQueue: a poisoned message returns nil to the
//     layers above it, and Dedup must not record that as a success, or a
//     replay from the poison topic would be skipped. It sits outside Retry so
//     a duplicate is skipped once and the key is recorded once, after the
//     attempt that succeeded.
//   - Retry retries transient errors with exponential backoff and jitter, and
//     resets the message context before each attempt so one attempt's
//     timeout does not cancel the next (#467). Permanent errors, panics and
//     context.Canceled are not retried.
//   - Timeout sits inside Retry so each attempt gets the full timeout; outside,
//     one slow attempt would leave the retries no time.
//   - Recoverer is innermost so a panic anywhere in the handler becomes an
//     error the layers above can act on. A panic is a bug that retrying will
//     not fix, so it is marked permanent and poisoned at once (reason panic).
func Chain(cfg ChainConfig) ([]message.HandlerMiddleware, error) {
	var problems []error
	if cfg.HandlerName == "" {
		problems = append(problems, errors.New("middleware: HandlerName is required"))
	}
	if cfg.PoisonPublisher == nil {
		problems = append(problems, errors.New("middleware: PoisonPublisher is required"))
	}
	if cfg.PoisonTopic == "" {
		problems = append(problems, errors.New("middleware: PoisonTopic is required"))
	}
	if cfg.Retry.MaxRetries < 0 {
		problems = append(problems, fmt.Errorf("middleware: Retry.MaxRetries must be >= 0, got %d", cfg.Retry.MaxRetries))
	}
	if cfg.Timeout < 0 {
		problems = append(problems, fmt.Errorf("middleware: Timeout must be >= 0, got %s", cfg.Timeout))
	}
	if (cfg.Dedup == nil) != (cfg.DedupKey == nil) {
		problems = append(problems, errors.New("middleware: Dedup and DedupKey must be set together"))
	}
	if err := errors.Join(problems...); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	hm := cfg.Metrics.Handler(cfg.HandlerName)

	poison, err := PoisonQueue(cfg.PoisonPublisher, cfg.PoisonTopic, hm, cfg.Logger)
	if err != nil {
		return nil, err
	}
	var chain []message.HandlerMiddleware
	if cfg.Tracer != nil {
		chain = append(chain, Tracing(cfg.Tracer, cfg.HandlerName, cfg.MessagingSystem))
	}
	chain = append(chain,
		Metrics(hm),
		wmw.CorrelationID,
		poison,
	)
	if cfg.Dedup != nil {
		chain = append(chain, Dedup(cfg.Dedup, cfg.DedupKey, logger))
	}
	chain = append(chain, Retry(cfg.Retry, hm, logger))
	if cfg.Timeout > 0 {
		chain = append(chain, wmw.Timeout(cfg.Timeout))
	}
	chain = append(chain, Recoverer)
	return chain, nil
}

// Apply wraps h in chain, outermost first, the way a Router does. It is for
// tests and benchmarks that run a handler without a Router.
func Apply(h message.HandlerFunc, chain []message.HandlerMiddleware) message.HandlerFunc {
	for i := len(chain) - 1; i >= 0; i-- {
		h = chain[i](h)
	}
	return h
}
