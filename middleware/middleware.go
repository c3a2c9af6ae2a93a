package middleware

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmw "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/cenkalti/backoff/v5"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/metrics"
	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/tracing"
)

// ReasonKindKey is the poison message metadata key that classifies why it
// was poisoned: ReasonPermanent, ReasonRetriesExhausted or ReasonPanic. It
// sits next to Watermill's reason_poisoned (the error text), topic_poisoned
// and handler_poisoned.
const ReasonKindKey = "reason_kind"

// Values of ReasonKindKey (and of the reason label of message_poisoned_total).
const (
	ReasonPermanent        = metrics.ReasonPermanent
	ReasonRetriesExhausted = metrics.ReasonRetriesExhausted
	ReasonPanic            = metrics.ReasonPanic
)

// delivery is the state of one delivery of a message, shared by the layers
// of the chain through the message context. It is created by the outermost
// layer that needs it, so Retry's context reset (which restores the context
// Retry was entered with) keeps it.
type delivery struct {
	// attempts counts handler calls; atomic because a handler may read it
	// from goroutines it starts.
	attempts   atomic.Int32
	maxRetries int
	// poisonReason is set when the message is handed to the poison queue.
	poisonReason string
}

type deliveryKey struct{}

// track returns msg's delivery state, creating it when absent.
func track(msg *message.Message) *delivery {
	if d, ok := msg.Context().Value(deliveryKey{}).(*delivery); ok {
		return d
	}
	d := &delivery{}
	msg.SetContext(context.WithValue(msg.Context(), deliveryKey{}, d))
	return d
}

// Attempt returns the number of the current handler call for this delivery
// (1 for the first, 2 for the first retry, ...) and whether it is the final
// one: when it fails with a transient error, the message is poisoned rather
// than retried (n > retry.max_retries). The executor handler uses it to
// publish a FAILED result before the message is poisoned. A permanent error
// is never retried, whatever final says.
//
// It needs Retry in the chain; without it (a handler called directly) every
// call is the first and final one: (1, true).
func Attempt(ctx context.Context) (n int, final bool) {
	d, ok := ctx.Value(deliveryKey{}).(*delivery)
	if !ok {
		return 1, true
	}
	n = max(int(d.attempts.Load()), 1)
	return n, n > d.maxRetries
}

// Metrics records message_processed_total, message_errors_total and
// message_processing_time_seconds for each delivery, the latter with the
// trace id as an exemplar when the delivery is traced. A message counts as an
// error when it was poisoned or returned an error, unless its context was
// canceled (shutdown: it will be redelivered, nothing failed). hm may be nil.
func Metrics(hm *metrics.Handler) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			ctx := msg.Context()
			d := track(msg)
			start := time.Now()
			out, err := h(msg)
			failed := d.poisonReason != "" || (err != nil && ctx.Err() == nil)
			hm.ProcessedContext(ctx, time.Since(start), failed)
			return out, err
		}
	}
}

// interruptedError marks an error returned after the message context ended:
// the router is closing, the message will be redelivered.
type interruptedError struct{ err error }

func (e *interruptedError) Error() string { return "interrupted by shutdown: " + e.err.Error() }
func (e *interruptedError) Unwrap() error { return e.err }

// shouldPoison is the PoisonQueueWithFilter filter: everything but
// cancellation and shutdown interruptions.
func shouldPoison(err error) bool {
	var ie *interruptedError
	return !errors.Is(err, context.Canceled) && !errors.As(err, &ie)
}

// reasonKind classifies a poisoned error.
func reasonKind(err error) string {
	var p wmw.RecoveredPanicError
	switch {
	case errors.As(err, &p):
		return ReasonPanic
	case permanent.Is(err):
		return ReasonPermanent
	default:
		return ReasonRetriesExhausted
	}
}

// PoisonQueue is Watermill's PoisonQueueWithFilter publishing failed
// messages to topic on pub, with the original payload and metadata plus
// reason_poisoned, topic_poisoned, handler_poisoned and ReasonKindKey. It
// never poisons context.Canceled, nor any error returned once the message
// context has ended (Router.Close cancels in-flight messages, watermill#446):
// those are nacked and redelivered. It counts message_poisoned_total on hm
// (which may be nil) once the poison message is published, and logs it at
// Error on logger (which may be nil): a poisoned message needs a person.
func PoisonQueue(pub message.Publisher, topic string, hm *metrics.Handler, logger watermill.LoggerAdapter) (message.HandlerMiddleware, error) {
	pq, err := wmw.PoisonQueueWithFilter(pub, topic, shouldPoison)
	if err != nil {
		return nil, fmt.Errorf("poison queue %q: %w", topic, err)
	}
	return func(h message.HandlerFunc) message.HandlerFunc {
		classified := pq(func(msg *message.Message) ([]*message.Message, error) {
			ctx := msg.Context()
			out, err := h(msg)
			// Inner layers replace the context and cancel theirs when done;
			// publish the poison message with this layer's context.
			msg.SetContext(ctx)
			if err == nil {
				return out, nil
			}
			// A permanent failure stays one even when shutdown started
			// meanwhile: its FAILED result may be out already, and a
			// redelivery would only fail again.
			if ctx.Err() != nil && (errors.Is(err, context.Canceled) || !permanent.Is(err)) {
				return out, &interruptedError{err}
			}
			if shouldPoison(err) {
				reason := reasonKind(err)
				msg.Metadata.Set(ReasonKindKey, reason)
				track(msg).poisonReason = reason
			}
			return out, err
		})
		return func(msg *message.Message) ([]*message.Message, error) {
			d := track(msg)
			out, err := classified(msg)
			if err == nil && d.poisonReason != "" {
				hm.Poisoned(d.poisonReason)
				if logger != nil {
					// A message that failed before its handler read an id
					// from it (an event that does not parse) is named by
					// its UUID, so the line can still be followed.
					corr := wmw.MessageCorrelationID(msg)
					if corr == "" {
						corr = msg.UUID
					}
					fields := watermill.LogFields{
						"message_uuid": msg.UUID, "poison_topic": topic, "reason_kind": d.poisonReason,
						"correlation_id": corr,
					}
					if id := tracing.TraceID(msg.Context()); id != "" {
						fields["trace_id"] = id // Watermill's logger takes no context
					}
					logger.Error("message poisoned", errors.New(msg.Metadata.Get(wmw.ReasonForPoisonedKey)), fields)
				}
			}
			return out, err
		}
	}, nil
}

// Retry retries transient errors with exponential backoff and jitter from
// cfg (cenkalti/backoff, as Watermill's Retry). It does not retry permanent
// errors (permanent.Is), panics (Recoverer marks them permanent) or
// context.Canceled, and stops waiting when the message context ends. It
// resets the message context before each attempt (watermill#467), counts
// message_retries_total on hm (which may be nil), logs each retry at Debug
// (a retry is routine; the metric counts them), and keeps the attempt
// counter Attempt reads.
//
// Written here rather than wrapping Watermill's Retry: that one builds a
// backoff, a generic retry loop and several closures for every message
// before the first attempt, about a tenth of a delivery's allocations,
// when nearly every message succeeds at once. This one allocates only when
// an attempt failed.
func Retry(cfg config.Retry, hm *metrics.Handler, logger watermill.LoggerAdapter) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			d := track(msg)
			ctx := msg.Context() // after track, which may add to it
			d.maxRetries = cfg.MaxRetries
			d.attempts.Store(1)
			if err := ctx.Err(); err != nil {
				return nil, err // shutting down: redelivered later, never run now
			}
			out, err := h(msg)
			if err == nil || cfg.MaxRetries == 0 || !retryable(err) {
				return out, err
			}
			b := backoff.NewExponentialBackOff()
			b.InitialInterval = cfg.InitialInterval
			b.MaxInterval = cfg.MaxInterval
			b.Multiplier = cfg.Multiplier
			b.RandomizationFactor = cfg.RandomizationFactor
			for retry := 1; retry <= cfg.MaxRetries; retry++ {
				wait := b.NextBackOff()
				if logger != nil {
					logger.Debug("Error occurred, retrying", watermill.LogFields{"error": err, "retry_no": retry,
						"max_retries": cfg.MaxRetries, "wait_time": wait, "message_uuid": msg.UUID})
				}
				timer := time.NewTimer(wait)
				select {
				case <-timer.C:
				case <-ctx.Done():
					timer.Stop()
					return out, context.Cause(ctx)
				}
				msg.SetContext(ctx)
				d.attempts.Add(1)
				hm.Retried()
				spanRetry(ctx, retry, err)
				if out, err = h(msg); err == nil || !retryable(err) {
					return out, err
				}
			}
			return out, err
		}
	}
}

// retryable reports whether another attempt may succeed: not for permanent
// errors, panics (marked permanent) or cancellation.
func retryable(err error) bool {
	return !permanent.Is(err) && !errors.Is(err, context.Canceled)
}

// Recoverer is Watermill's Recoverer with the recovered panic marked
// permanent: a panic is a bug, retrying rarely helps, so the message goes
// to the poison topic at once with reason panic and the stack trace.
func Recoverer(h message.HandlerFunc) message.HandlerFunc {
	recovering := wmw.Recoverer(h)
	return func(msg *message.Message) ([]*message.Message, error) {
		out, err := recovering(msg)
		var p wmw.RecoveredPanicError
		if errors.As(err, &p) {
			return out, permanent.Wrap(err)
		}
		return out, err
	}
}
