package middleware

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmw "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/metrics"
	"github.com/eventpipe/eventpipe/permanent"
)

const poisonTopic = "schedule-tasks.dlq"

// fastRetry retries without noticeable waits and without jitter.
var fastRetry = config.Retry{
	MaxRetries:      3,
	InitialInterval: time.Millisecond,
	MaxInterval:     4 * time.Millisecond,
	Multiplier:      2,
}

type harness struct {
	reg    *prometheus.Registry
	logger *watermill.CaptureLoggerAdapter
	poison <-chan *message.Message
	pubsub *gochannel.GoChannel
}

// newHarness returns a chain config whose poison topic is a subscribed GoChannel topic.
func newHarness(t *testing.T) (*harness, ChainConfig) {
	t.Helper()
	h := &harness{reg: prometheus.NewRegistry(), logger: watermill.NewCaptureLogger()}
	h.pubsub = gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 16}, h.logger)
	t.Cleanup(func() { _ = h.pubsub.Close() })
	var err error
	h.poison, err = h.pubsub.Subscribe(t.Context(), poisonTopic)
	require.NoError(t, err)
	return h, ChainConfig{
		HandlerName:     "executor",
		PoisonPublisher: h.pubsub,
		PoisonTopic:     poisonTopic,
		Retry:           fastRetry,
		Timeout:         time.Second,
		Metrics:         metrics.New(h.reg),
		Logger:          h.logger,
	}
}

func (h *harness) wrap(t *testing.T, cfg ChainConfig, handler message.HandlerFunc) message.HandlerFunc {
	t.Helper()
	chain, err := Chain(cfg)
	require.NoError(t, err)
	return Apply(handler, chain)
}

// poisoned returns the next poison message.
func (h *harness) poisoned(t *testing.T) *message.Message {
	t.Helper()
	select {
	case msg, ok := <-h.poison:
		require.True(t, ok, "poison subscription closed")
		msg.Ack()
		return msg
	case <-time.After(5 * time.Second):
		t.Fatal("no poison message within 5s")
		return nil
	}
}

func (h *harness) assertNoPoison(t *testing.T) {
	t.Helper()
	select {
	case msg, ok := <-h.poison:
		require.True(t, ok, "poison subscription closed")
		msg.Ack()
		t.Fatalf("unexpected poison message, reason %q", msg.Metadata.Get(wmw.ReasonForPoisonedKey))
	case <-time.After(50 * time.Millisecond):
	}
}

// metric returns the value of the counter or histogram count name with labels.
func (h *harness) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := h.reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			if m.GetHistogram() != nil {
				return float64(m.GetHistogram().GetSampleCount())
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func newMsg() *message.Message {
	msg := message.NewMessage("msg-1", []byte(`{"taskId":"t-1"}`))
	msg.Metadata.Set("correlation_id", "trace-1")
	msg.Metadata.Set("origin", "test")
	return msg
}

func TestChain_permanent_error_poisons_at_once_without_retries(t *testing.T) {
	t.Parallel()
	h, cfg := newHarness(t)
	var calls atomic.Int32
	handler := h.wrap(t, cfg, func(*message.Message) ([]*message.Message, error) {
		calls.Add(1)
		return nil, permanent.Wrap(errors.New("unknown executor \"fax\""))
	})

	_, err := handler(newMsg())
	require.NoError(t, err, "a poisoned message is acked")
	p := h.poisoned(t)

	assert.Equal(t, int32(1), calls.Load())
	assert.Equal(t, ReasonPermanent, p.Metadata.Get(ReasonKindKey))
	assert.Equal(t, `unknown executor "fax"`, p.Metadata.Get(wmw.ReasonForPoisonedKey))
	assert.Equal(t, "msg-1", p.UUID)
	assert.JSONEq(t, `{"taskId":"t-1"}`, string(p.Payload))
	assert.Equal(t, "test", p.Metadata.Get("origin"))
	assert.Equal(t, 1.0, h.metric(t, "message_poisoned_total", map[string]string{"handler": "executor", "reason": ReasonPermanent}))
	assert.Equal(t, 0.0, h.metric(t, "message_retries_total", nil))
	assert.Equal(t, 1.0, h.metric(t, "message_errors_total", map[string]string{"handler": "executor"}))
	assert.Equal(t, 1.0, h.metric(t, "message_processed_total", map[string]string{"handler": "executor"}))
}

func TestChain_transient_error_is_retried_then_poisoned(t *testing.T) {
	t.Parallel()
	h, cfg := newHarness(t)
	var calls atomic.Int32
	handler := h.wrap(t, cfg, func(*message.Message) ([]*message.Message, error) {
		calls.Add(1)
		return nil, errors.New("connection refused")
	})

	_, err := handler(newMsg())
	require.NoError(t, err)
	p := h.poisoned(t)

	assert.Equal(t, int32(cfg.Retry.MaxRetries+1), calls.Load())
	assert.Equal(t, ReasonRetriesExhausted, p.Metadata.Get(ReasonKindKey))
	assert.Equal(t, "connection refused", p.Metadata.Get(wmw.ReasonForPoisonedKey))
	assert.JSONEq(t, `{"taskId":"t-1"}`, string(p.Payload))
	assert.Equal(t, "trace-1", p.Metadata.Get("correlation_id"))
	assert.Equal(t, float64(cfg.Retry.MaxRetries), h.metric(t, "message_retries_total", map[string]string{"handler": "executor"}))
	assert.Equal(t, 1.0, h.metric(t, "message_poisoned_total", map[string]string{"reason": ReasonRetriesExhausted}))
}

func TestChain_transient_error_then_success_is_not_poisoned(t *testing.T) {
	t.Parallel()
	h, cfg := newHarness(t)
	var calls atomic.Int32
	handler := h.wrap(t, cfg, func(*message.Message) ([]*message.Message, error) {
		if calls.Add(1) < 3 {
			return nil, errors.New("503")
		}
		return []*message.Message{message.NewMessage("result-1", nil)}, nil
	})

	out, err := handler(newMsg())
	require.NoError(t, err)
	require.Len(t, out, 1)
	assert.Equal(t, "trace-1", out[0].Metadata.Get("correlation_id"), "CorrelationID copies the id to produced messages")
	assert.Equal(t, int32(3), calls.Load())
	h.assertNoPoison(t)
	assert.Equal(t, 0.0, h.metric(t, "message_errors_total", nil))
	assert.Equal(t, 2.0, h.metric(t, "message_retries_total", nil))
}

func TestChain_context_canceled_is_never_retried_or_poisoned(t *testing.T) {
	t.Parallel()
	h, cfg := newHarness(t)
	var calls atomic.Int32
	handler := h.wrap(t, cfg, func(*message.Message) ([]*message.Message, error) {
		calls.Add(1)
		return nil, context.Canceled
	})

	_, err := handler(newMsg())
	assert.ErrorIs(t, err, context.Canceled, "the message is nacked and redelivered")
	assert.Equal(t, int32(1), calls.Load())
	h.assertNoPoison(t)
}

func TestChain_error_after_shutdown_is_not_poisoned(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		handler func(ctx context.Context) error
	}{
		{name: "handler returns ctx error", handler: func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}},
		{name: "handler returns its own error", handler: func(ctx context.Context) error {
			<-ctx.Done()
			return errors.New("write: broken pipe")
		}},
		{name: "handler returns a permanent cancellation", handler: func(ctx context.Context) error {
			<-ctx.Done()
			return permanent.Wrap(fmt.Errorf("aborted: %w", ctx.Err()))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h, cfg := newHarness(t)
			handler := h.wrap(t, cfg, func(msg *message.Message) ([]*message.Message, error) {
				return nil, tt.handler(msg.Context())
			})
			// The Router cancels in-flight message contexts on Close.
			ctx, cancel := context.WithCancel(t.Context())
			msg := newMsg()
			msg.SetContext(ctx)
			time.AfterFunc(20*time.Millisecond, cancel)

			_, err := handler(msg)
			assert.Error(t, err, "the message is nacked and redelivered")
			h.assertNoPoison(t)
			assert.Equal(t, 0.0, h.metric(t, "message_errors_total", nil), "shutdown is not an error")
		})
	}
}

func TestChain_panic_is_recovered_and_poisoned_without_retries(t *testing.T) {
	t.Parallel()
	h, cfg := newHarness(t)
	var calls atomic.Int32
	handler := h.wrap(t, cfg, func(*message.Message) ([]*message.Message, error) {
		calls.Add(1)
		panic("nil map write")
	})

	var err error
	require.NotPanics(t, func() { _, err = handler(newMsg()) })
	require.NoError(t, err)
	p := h.poisoned(t)
	assert.Equal(t, int32(1), calls.Load())
	assert.Equal(t, ReasonPanic, p.Metadata.Get(ReasonKindKey))
	assert.Contains(t, p.Metadata.Get(wmw.ReasonForPoisonedKey), "nil map write")
	assert.Equal(t, 1.0, h.metric(t, "message_poisoned_total", map[string]string{"reason": ReasonPanic}))
}

func TestChain_each_attempt_gets_a_fresh_timeout(t *testing.T) {
	t.Parallel()
	h, cfg := newHarness(t)
	cfg.Timeout = 20 * time.Millisecond
	var alreadyDone atomic.Int32
	var calls atomic.Int32
	handler := h.wrap(t, cfg, func(msg *message.Message) ([]*message.Message, error) {
		calls.Add(1)
		if msg.Context().Err() != nil {
			alreadyDone.Add(1)
		}
		<-msg.Context().Done()
		return nil, msg.Context().Err()
	})

	_, err := handler(newMsg())
	require.NoError(t, err)
	p := h.poisoned(t)
	assert.Equal(t, int32(cfg.Retry.MaxRetries+1), calls.Load(), "a timed-out attempt is retried")
	assert.Zero(t, alreadyDone.Load(), "no attempt may start with the previous attempt's expired context")
	assert.Equal(t, ReasonRetriesExhausted, p.Metadata.Get(ReasonKindKey))
	assert.Equal(t, context.DeadlineExceeded.Error(), p.Metadata.Get(wmw.ReasonForPoisonedKey))
}

func TestChain_backoff_follows_configured_intervals(t *testing.T) {
	t.Parallel()
	h, cfg := newHarness(t)
	cfg.Retry = config.Retry{MaxRetries: 3, InitialInterval: 10 * time.Millisecond, MaxInterval: 25 * time.Millisecond, Multiplier: 2}
	handler := h.wrap(t, cfg, func(*message.Message) ([]*message.Message, error) {
		return nil, errors.New("transient")
	})
	_, err := handler(newMsg())
	require.NoError(t, err)
	h.poisoned(t)

	var waits []time.Duration
	for _, m := range h.logger.Captured()[watermill.DebugLogLevel] {
		if m.Msg == "Error occurred, retrying" {
			waits = append(waits, m.Fields["wait_time"].(time.Duration))
		}
	}
	// Without jitter: initial, initial*multiplier, then capped at max_interval.
	assert.Equal(t, []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 25 * time.Millisecond}, waits)
}

func TestAttempt_counts_calls_and_flags_the_final_one(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		maxRetries int
		want       [][2]any
	}{
		{name: "three retries", maxRetries: 3, want: [][2]any{{1, false}, {2, false}, {3, false}, {4, true}}},
		{name: "no retries", maxRetries: 0, want: [][2]any{{1, true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h, cfg := newHarness(t)
			cfg.Retry.MaxRetries = tt.maxRetries
			var mu sync.Mutex
			var got [][2]any
			handler := h.wrap(t, cfg, func(msg *message.Message) ([]*message.Message, error) {
				n, final := Attempt(msg.Context())
				mu.Lock()
				got = append(got, [2]any{n, final})
				mu.Unlock()
				return nil, errors.New("transient")
			})
			_, err := handler(newMsg())
			require.NoError(t, err)
			h.poisoned(t)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestAttempt_restarts_for_each_delivery(t *testing.T) {
	t.Parallel()
	h, cfg := newHarness(t)
	var first []int
	handler := h.wrap(t, cfg, func(msg *message.Message) ([]*message.Message, error) {
		n, _ := Attempt(msg.Context())
		first = append(first, n)
		return nil, nil
	})
	for range 2 {
		_, err := handler(newMsg())
		require.NoError(t, err)
	}
	assert.Equal(t, []int{1, 1}, first)
}

func TestAttempt_outside_the_chain_is_first_and_final(t *testing.T) {
	t.Parallel()
	n, final := Attempt(context.Background())
	assert.Equal(t, 1, n)
	assert.True(t, final)
}

// failingPublisher fails every Publish.
type failingPublisher struct{}

func (failingPublisher) Publish(string, ...*message.Message) error { return errors.New("broker down") }
func (failingPublisher) Close() error                              { return nil }

func TestChain_failed_poison_publish_nacks_the_message(t *testing.T) {
	t.Parallel()
	h, cfg := newHarness(t)
	cfg.PoisonPublisher = failingPublisher{}
	handler := h.wrap(t, cfg, func(*message.Message) ([]*message.Message, error) {
		return nil, permanent.Wrap(errors.New("bad input"))
	})

	_, err := handler(newMsg())
	require.Error(t, err, "nothing is lost: the message is nacked")
	assert.Contains(t, err.Error(), "bad input")
	assert.Contains(t, err.Error(), "broker down")
	assert.Equal(t, 0.0, h.metric(t, "message_poisoned_total", nil))
	assert.Equal(t, 1.0, h.metric(t, "message_errors_total", nil))
}

func TestChain_runs_with_metrics_off(t *testing.T) {
	t.Parallel()
	h, cfg := newHarness(t)
	cfg.Metrics = nil
	handler := h.wrap(t, cfg, func(*message.Message) ([]*message.Message, error) {
		return nil, permanent.Wrap(errors.New("bad"))
	})
	_, err := handler(newMsg())
	require.NoError(t, err)
	assert.Equal(t, ReasonPermanent, h.poisoned(t).Metadata.Get(ReasonKindKey))
}

func TestChain_rejects_incomplete_config(t *testing.T) {
	t.Parallel()
	_, err := Chain(ChainConfig{Retry: config.Retry{MaxRetries: -1}, Timeout: -time.Second, Dedup: newTestStore(t)})
	require.Error(t, err)
	for _, want := range []string{
		"HandlerName is required", "PoisonPublisher is required", "PoisonTopic is required",
		"Retry.MaxRetries must be >= 0, got -1", "Timeout must be >= 0, got -1s", "Dedup and DedupKey must be set together",
	} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestChain_in_a_router_poisons_with_watermill_metadata(t *testing.T) {
	t.Parallel()
	h, cfg := newHarness(t)
	router, err := message.NewRouter(message.RouterConfig{}, h.logger)
	require.NoError(t, err)
	chain, err := Chain(cfg)
	require.NoError(t, err)
	in := gochannel.NewGoChannel(gochannel.Config{}, h.logger) // the Router closes it
	router.AddConsumerHandler("executor", "schedule-tasks", in,
		func(*message.Message) error { return permanent.Wrap(errors.New("bad task")) },
	).AddMiddleware(chain...)
	go func() { _ = router.Run(t.Context()) }()
	t.Cleanup(func() { _ = router.Close() })
	<-router.Running()

	require.NoError(t, in.Publish("schedule-tasks", newMsg()))
	p := h.poisoned(t)
	assert.Equal(t, "schedule-tasks", p.Metadata.Get(wmw.PoisonedTopicKey))
	assert.Equal(t, "executor", p.Metadata.Get(wmw.PoisonedHandlerKey))
	assert.Equal(t, ReasonPermanent, p.Metadata.Get(ReasonKindKey))
}

func TestChain_router_close_does_not_poison_in_flight_message(t *testing.T) {
	t.Parallel()
	h, cfg := newHarness(t)
	cfg.Timeout = 0
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, h.logger)
	require.NoError(t, err)
	chain, err := Chain(cfg)
	require.NoError(t, err)
	started := make(chan struct{})
	in := gochannel.NewGoChannel(gochannel.Config{}, h.logger) // the Router closes it
	router.AddConsumerHandler("executor", "schedule-tasks", in,
		func(msg *message.Message) error {
			close(started)
			<-msg.Context().Done()
			return msg.Context().Err()
		},
	).AddMiddleware(chain...)
	go func() { _ = router.Run(t.Context()) }()
	<-router.Running()

	require.NoError(t, in.Publish("schedule-tasks", newMsg()))
	<-started
	require.NoError(t, router.Close())
	h.assertNoPoison(t)
}

// A permanent failure stays one when shutdown starts meanwhile: the handler
// may have published its FAILED result, and a redelivery would only fail
// again (and publish a second one).
func TestChain_permanent_error_during_shutdown_is_still_poisoned(t *testing.T) {
	t.Parallel()
	h, cfg := newHarness(t)
	handler := h.wrap(t, cfg, func(msg *message.Message) ([]*message.Message, error) {
		<-msg.Context().Done()
		return nil, permanent.Wrap(errors.New("unknown executor \"nope\""))
	})
	ctx, cancel := context.WithCancel(t.Context())
	msg := newMsg()
	msg.SetContext(ctx)
	time.AfterFunc(20*time.Millisecond, cancel)

	_, err := handler(msg)
	assert.NoError(t, err, "poisoned messages are acked")
	assert.Contains(t, h.poisoned(t).Metadata.Get("reason_poisoned"), "unknown executor")
}
