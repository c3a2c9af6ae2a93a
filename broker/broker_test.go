package broker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/config"
)

func newEmbedded(t *testing.T) Broker {
	t.Helper()
	b, err := New(config.Default().Broker, config.Default().Topics, watermill.NewCaptureLogger())
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func receive(t *testing.T, ch <-chan *message.Message) *message.Message {
	t.Helper()
	select {
	case msg, ok := <-ch:
		require.True(t, ok, "subscription closed")
		return msg
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
		return nil
	}
}

func TestNew_rejects_unknown_kinds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		kind    string
		wantErr string
	}{
		{name: "unknown kind lists known kinds", kind: "nats", wantErr: `unknown broker kind "nats" (known: embedded, kafka, amqp)`},
		{name: "empty kind", kind: "", wantErr: `unknown broker kind ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := config.Default().Broker
			cfg.Kind = tt.kind
			b, err := New(cfg, config.Default().Topics, nil)
			require.Error(t, err)
			assert.Nil(t, b)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

func TestEmbedded_delivers_published_message_with_metadata(t *testing.T) {
	t.Parallel()
	b := newEmbedded(t)
	sub, err := b.Subscriber("business-events")
	require.NoError(t, err)
	ch, err := sub.Subscribe(t.Context(), "business-events")
	require.NoError(t, err)

	msg := message.NewMessage("id-1", []byte(`{"eventType":"order.created"}`))
	msg.Metadata.Set("correlation_id", "trace-1")
	require.NoError(t, b.Publisher().Publish("business-events", msg))

	got := receive(t, ch)
	got.Ack()
	assert.Equal(t, "id-1", got.UUID)
	assert.JSONEq(t, `{"eventType":"order.created"}`, string(got.Payload))
	assert.Equal(t, "trace-1", got.Metadata.Get("correlation_id"))
}

func TestEmbedded_each_subscriber_is_a_group_that_gets_every_message(t *testing.T) {
	t.Parallel()
	b := newEmbedded(t)
	var chans []<-chan *message.Message
	for range 2 {
		sub, err := b.Subscriber("t")
		require.NoError(t, err)
		ch, err := sub.Subscribe(t.Context(), "t")
		require.NoError(t, err)
		chans = append(chans, ch)
	}

	require.NoError(t, b.Publisher().Publish("t", message.NewMessage("m", nil)))
	for _, ch := range chans {
		got := receive(t, ch)
		got.Ack()
		assert.Equal(t, "m", got.UUID)
	}
}

func TestEmbedded_subscriptions_of_one_group_compete_and_run_in_parallel(t *testing.T) {
	t.Parallel()
	b := newEmbedded(t)
	sub, err := b.Subscriber("t")
	require.NoError(t, err)
	ch1, err := sub.Subscribe(t.Context(), "t")
	require.NoError(t, err)
	ch2, err := sub.Subscribe(t.Context(), "t")
	require.NoError(t, err)

	require.NoError(t, b.Publisher().Publish("t", message.NewMessage("a", nil), message.NewMessage("b", nil)))
	// Both are in flight at once: neither is acked before the other arrives.
	first, second := receive(t, ch1), receive(t, ch2)
	assert.ElementsMatch(t, []string{"a", "b"}, []string{first.UUID, second.UUID}, "each message goes to one member")
	first.Ack()
	second.Ack()

	select {
	case m := <-ch1:
		t.Fatalf("unexpected redelivery of %s", m.UUID)
	case m := <-ch2:
		t.Fatalf("unexpected redelivery of %s", m.UUID)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestEmbedded_group_refuses_a_second_topic(t *testing.T) {
	t.Parallel()
	b := newEmbedded(t)
	sub, err := b.Subscriber("t")
	require.NoError(t, err)
	_, err = sub.Subscribe(t.Context(), "t")
	require.NoError(t, err)
	_, err = sub.Subscribe(t.Context(), "other")
	assert.ErrorContains(t, err, `cannot also subscribe to "other"`)
}

func TestEmbedded_subscription_closes_when_its_context_ends(t *testing.T) {
	t.Parallel()
	b := newEmbedded(t)
	sub, err := b.Subscriber("t")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	ch, err := sub.Subscribe(ctx, "t")
	require.NoError(t, err)
	cancel()
	select {
	case _, ok := <-ch:
		assert.False(t, ok)
	case <-time.After(5 * time.Second):
		t.Fatal("subscription not closed")
	}
}

func TestEmbedded_drops_messages_without_subscriber(t *testing.T) {
	t.Parallel()
	b := newEmbedded(t)
	require.NoError(t, b.Publisher().Publish("t", message.NewMessage("early", nil)))

	sub, err := b.Subscriber("t")
	require.NoError(t, err)
	ch, err := sub.Subscribe(t.Context(), "t")
	require.NoError(t, err)
	require.NoError(t, b.Publisher().Publish("t", message.NewMessage("late", nil)))

	got := receive(t, ch)
	got.Ack()
	assert.Equal(t, "late", got.UUID, "the message published before subscribing must be gone")
}

func TestEmbedded_close_of_publisher_or_subscriber_keeps_broker_open(t *testing.T) {
	t.Parallel()
	b := newEmbedded(t)
	sub, err := b.Subscriber("t")
	require.NoError(t, err)
	ch, err := sub.Subscribe(t.Context(), "t")
	require.NoError(t, err)

	// A Router closes its handlers' publisher and subscriber.
	require.NoError(t, b.Publisher().Close())
	require.NoError(t, sub.Close())

	require.NoError(t, b.Ping(t.Context()))
	require.NoError(t, b.Publisher().Publish("t", message.NewMessage("still", nil)))
	got := receive(t, ch)
	got.Ack()
	assert.Equal(t, "still", got.UUID)
}

func TestEmbedded_after_close_fails_ping_publish_and_subscribe(t *testing.T) {
	t.Parallel()
	b := newEmbedded(t)
	require.NoError(t, b.Ping(t.Context()))
	require.NoError(t, b.Close())

	assert.ErrorIs(t, b.Ping(t.Context()), ErrClosed)
	_, err := b.Subscriber("t")
	assert.ErrorIs(t, err, ErrClosed)
	assert.Error(t, b.Publisher().Publish("t", message.NewMessage("x", nil)))
}

func TestEmbedded_redelivers_nacked_message(t *testing.T) {
	t.Parallel()
	b := newEmbedded(t)
	sub, err := b.Subscriber("t")
	require.NoError(t, err)
	ch, err := sub.Subscribe(t.Context(), "t")
	require.NoError(t, err)
	require.NoError(t, b.Publisher().Publish("t", message.NewMessage("n", nil)))

	first := receive(t, ch)
	first.Nack()
	again := receive(t, ch)
	again.Ack()
	assert.Equal(t, "n", again.UUID)
}

func TestEmbedded_backlog_counts_unacked_messages_of_subscribed_topics(t *testing.T) {
	t.Parallel()
	b := NewEmbedded(config.Default().Broker.Embedded, nil)
	t.Cleanup(func() { _ = b.Close() })
	require.NoError(t, b.Publisher().Publish("t", message.NewMessage("before-subscribe", nil)))
	sub, err := b.Subscriber("t")
	require.NoError(t, err)
	ch, err := sub.Subscribe(t.Context(), "t")
	require.NoError(t, err)
	require.NoError(t, b.Publisher().Publish("t", message.NewMessage("1", nil), message.NewMessage("2", nil), message.NewMessage("3", nil)))
	require.NoError(t, b.Publisher().Publish("unsubscribed", message.NewMessage("x", nil)))

	backlog, err := b.Backlog(t.Context())
	require.NoError(t, err)
	assert.Equal(t, []Backlog{{Topic: "t", Partition: "0", Messages: 3}}, backlog)

	for range 3 {
		receive(t, ch).Ack()
	}
	require.Eventually(t, func() bool {
		backlog, err := b.Backlog(t.Context())
		return err == nil && len(backlog) == 1 && backlog[0].Messages == 0
	}, 5*time.Second, time.Millisecond)
}

func TestEmbedded_publish_waits_while_the_consumer_group_is_full(t *testing.T) {
	t.Parallel()
	b := NewEmbedded(config.EmbeddedBroker{BufferSize: 2}, nil)
	t.Cleanup(func() { _ = b.Close() })
	sub, err := b.Subscriber("t")
	require.NoError(t, err)
	ch, err := sub.Subscribe(t.Context(), "t")
	require.NoError(t, err)

	// 1 in flight at the member + 2 buffered + 1 held by GoChannel's sender:
	// the 6th publish cannot complete until the handler acks.
	published := make(chan struct{})
	go func() {
		for i := range 6 {
			assert.NoError(t, b.Publisher().Publish("t", message.NewMessage(fmt.Sprint(i), nil)))
		}
		close(published)
	}()
	first := receive(t, ch)
	select {
	case <-published:
		t.Fatal("publish completed although the consumer group is full")
	case <-time.After(100 * time.Millisecond):
	}
	first.Ack()
	for range 5 {
		receive(t, ch).Ack()
	}
	select {
	case <-published:
	case <-time.After(5 * time.Second):
		t.Fatal("publish still blocked after the handler caught up")
	}
}

// A busy handler must be able to publish its output, and new subscriptions
// must start, while a publisher waits for room in a full group.
func TestEmbedded_full_group_blocks_neither_other_publishes_nor_subscribes(t *testing.T) {
	t.Parallel()
	b := NewEmbedded(config.EmbeddedBroker{BufferSize: 1}, nil)
	t.Cleanup(func() { _ = b.Close() })
	sub, err := b.Subscriber("a")
	require.NoError(t, err)
	ch, err := sub.Subscribe(t.Context(), "a")
	require.NoError(t, err)
	go func() {
		for i := range 3 {
			_ = b.Publisher().Publish("a", message.NewMessage(fmt.Sprint(i), nil))
		}
	}()
	busy := receive(t, ch) // held, not acked: group "a" is full

	done := make(chan struct{})
	go func() {
		defer close(done)
		other, err := b.Subscriber("c")
		assert.NoError(t, err)
		_, err = other.Subscribe(t.Context(), "c")
		assert.NoError(t, err)
		assert.NoError(t, b.Publisher().Publish("b", message.NewMessage("output", nil)))
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("subscribe or publish blocked behind a full group")
	}
	busy.Ack()
}

func TestEmbedded_member_that_leaves_holding_a_message_gives_it_back_to_the_group(t *testing.T) {
	t.Parallel()
	nothing := func(*message.Message) {}
	nack := func(m *message.Message) { m.Nack() }
	ack := func(m *message.Message) { m.Ack() }
	tests := []struct {
		name string
		// before and after: what the holder's handler does with the message
		// before and after its subscription ends.
		before, after func(*message.Message)
		wantOther     bool // the other subscription gets the message
	}{
		{name: "taken for redelivery after a nack, not handed over yet", before: nack, after: nothing, wantOther: true},
		{name: "handed over, nacked after the subscription ended", before: nothing, after: nack, wantOther: true},
		{name: "handed over, acked after the subscription ended", before: nothing, after: ack, wantOther: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := NewEmbedded(config.Default().Broker.Embedded, nil)
			t.Cleanup(func() { _ = b.Close() })
			sub, err := b.Subscriber("t")
			require.NoError(t, err)
			var chans [2]<-chan *message.Message
			var cancels [2]context.CancelFunc
			for i := range chans {
				ctx, cancel := context.WithCancel(t.Context())
				t.Cleanup(cancel)
				chans[i], err = sub.Subscribe(ctx, "t")
				require.NoError(t, err)
				cancels[i] = cancel
			}
			require.NoError(t, b.Publisher().Publish("t", message.NewMessage("m", nil)))

			var held *message.Message
			holder := 0
			select {
			case held = <-chans[0]:
			case held = <-chans[1]:
				holder = 1
			case <-time.After(5 * time.Second):
				t.Fatal("no message within 5s")
			}
			other := chans[1-holder]
			tt.before(held)
			cancels[holder]()
			tt.after(held)

			if tt.wantOther {
				got := receive(t, other)
				assert.Equal(t, "m", got.UUID)
				got.Ack()
			} else {
				select {
				case m := <-other:
					t.Fatalf("%s acked by its handler was delivered again", m.UUID)
				case <-time.After(100 * time.Millisecond):
				}
			}
			require.Eventually(t, func() bool {
				backlog, err := b.Backlog(t.Context())
				return err == nil && len(backlog) == 1 && backlog[0].Messages == 0
			}, 5*time.Second, time.Millisecond, "the message is acked once, and counted")
		})
	}
}

func TestEmbedded_later_subscription_gets_the_message_the_last_member_gave_back(t *testing.T) {
	t.Parallel()
	b := newEmbedded(t)
	sub, err := b.Subscriber("t")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	ch, err := sub.Subscribe(ctx, "t")
	require.NoError(t, err)
	require.NoError(t, b.Publisher().Publish("t", message.NewMessage("m", nil)))
	held := receive(t, ch)
	cancel()
	held.Nack() // its handler was aborted

	later, err := sub.Subscribe(t.Context(), "t")
	require.NoError(t, err)
	got := receive(t, later)
	got.Ack()
	assert.Equal(t, "m", got.UUID)
}
