package integration_test

import (
	"context"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/config"
)

// TestUniversalPubSub runs Watermill's universal Pub/Sub suite against our
// publisher/subscriber pairs exactly as eventpipe configures them (our
// marshalers, topology, confirms and retries), so they keep Watermill's
// contract. Every constructor call opens a broker; closing the subscriber
// closes it (the broker's own Publisher/Subscriber Close is a no-op by
// design, which the suite's close tests would not see).
func TestUniversalPubSub(t *testing.T) {
	t.Parallel()
	t.Run("kafka", func(t *testing.T) {
		t.Parallel()
		tgt := kafkaTarget(t)
		base := newConfig(t, tgt)
		seen := &topicSet{}
		if kafkaProvider.external {
			t.Cleanup(func() { deleteKafkaTopics(base.Broker.Kafka.Brokers, append(seen.list(), pipelineTopics(base)...)) })
		}
		open := func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
			cfg := *base
			cfg.Broker.Kafka.ConsumerGroup = group
			// Not tgt.open: its cleanup would delete topics other subtests share.
			b, err := broker.NewKafka(cfg.Broker.Kafka, cfg.Topics, wmLogger())
			require.NoError(t, err)
			t.Cleanup(func() { _ = b.Close() })
			return recordingPub{closingPub{b.Publisher()}, seen}, &closingSub{sub: subscriberOf(t, b, &cfg), close: b.Close, seen: seen}
		}
		tests.TestPubSub(t, tests.Features{
			ConsumerGroups: true,
			Persistent:     true,
			// Records of one key keep their order; the suite's have no key.
			GuaranteedOrder: false,
			ForceShort:      true,
		}, func(t *testing.T) (message.Publisher, message.Subscriber) {
			return open(t, base.Broker.Kafka.ConsumerGroup)
		}, func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
			return open(t, base.Broker.Kafka.ConsumerGroup+"-"+group)
		})
	})
	amqpFeatures := tests.Features{
		// One queue per topic: every subscriber competes; no groups.
		ConsumerGroups: false,
		Persistent:     true,
		// Not GuaranteedOrder: the subscriber hands out up to prefetch
		// messages before the first is acked (TestNoAck checks one at a
		// time); delivery order is kept, and per-key order by the broker.
		GuaranteedOrder:                     false,
		GuaranteedOrderWithSingleSubscriber: true,
		ForceShort:                          true,
	}
	t.Run("amqp_queues", func(t *testing.T) {
		t.Parallel()
		tgt := amqpTarget(t)
		base := newConfig(t, tgt)
		seen := &topicSet{}
		t.Cleanup(func() {
			deleteAMQP(base.Broker.AMQP.URL, append(seen.list(), pipelineTopics(base)...), base.Broker.AMQP.Exchange)
		})
		tests.TestPubSub(t, amqpFeatures, func(t *testing.T) (message.Publisher, message.Subscriber) {
			// Not tgt.open: its cleanup would delete the dead-letter
			// exchange other subtests share.
			b, err := broker.NewAMQP(base.Broker.AMQP, base.Topics, wmLogger())
			require.NoError(t, err)
			t.Cleanup(func() { _ = b.Close() })
			return recordingPub{closingPub{b.Publisher()}, seen}, &closingSub{sub: subscriberOf(t, b, base), close: b.Close, seen: seen}
		}, nil)
	})
	t.Run("amqp_events_exchange", func(t *testing.T) {
		t.Parallel()
		// Every suite topic is an events topic: published to a topic
		// exchange of its own, consumed from the queue bound to it.
		tgt := amqpTarget(t)
		base := newConfig(t, tgt)
		seen := &topicSet{}
		t.Cleanup(func() {
			for _, topic := range seen.list() {
				deleteAMQP(base.Broker.AMQP.URL, []string{topic}, topic+".exchange")
			}
		})
		tests.TestPubSub(t, amqpFeatures, func(t *testing.T) (message.Publisher, message.Subscriber) {
			pt := &perTopicBroker{t: t, seen: seen, open: func(topic string) broker.Broker {
				cfg := *base
				cfg.Topics.Events = topic
				cfg.Broker.AMQP.Exchange = topic + ".exchange"
				a, err := broker.NewAMQP(cfg.Broker.AMQP, cfg.Topics, wmLogger())
				require.NoError(t, err)
				return a
			}}
			t.Cleanup(func() { _ = pt.Close() })
			// The suite closes a publisher without meaning its subscriber.
			return closingPub{pt}, pt
		}, nil)
	})
}

func subscriberOf(t *testing.T, b broker.Broker, cfg *config.Config) message.Subscriber {
	t.Helper()
	// Subscriber needs a topic, but what it returns subscribes to any
	// (each topic's topology is declared on Subscribe): use the results
	// topic, unique to the suite and deleted with it.
	sub, err := b.Subscriber(cfg.Topics.Results)
	require.NoError(t, err)
	return sub
}

// closingPub leaves closing to the subscriber, which closes the broker.
type closingPub struct{ message.Publisher }

func (closingPub) Close() error { return nil }

// recordingPub records the topics it publishes to, for cleanup.
type recordingPub struct {
	message.Publisher
	seen *topicSet
}

func (p recordingPub) Publish(topic string, msgs ...*message.Message) error {
	p.seen.add(topic)
	return p.Publisher.Publish(topic, msgs...)
}

// closingSub closes its broker on Close.
type closingSub struct {
	sub   message.Subscriber
	close func() error
	seen  *topicSet
	once  sync.Once
	err   error
}

func (s *closingSub) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if s.seen != nil {
		s.seen.add(topic)
	}
	return s.sub.Subscribe(ctx, topic)
}

func (s *closingSub) Close() error {
	s.once.Do(func() { s.err = s.close() })
	return s.err
}

// perTopicBroker opens one AMQP broker per topic, each with that topic as
// its events topic.
type perTopicBroker struct {
	t    *testing.T
	seen *topicSet
	open func(topic string) broker.Broker

	mu      sync.Mutex
	brokers map[string]broker.Broker
	closed  bool
}

func (p *perTopicBroker) broker(topic string) (broker.Broker, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, broker.ErrClosed
	}
	if p.brokers == nil {
		p.brokers = map[string]broker.Broker{}
	}
	b, ok := p.brokers[topic]
	if !ok {
		p.seen.add(topic)
		b = p.open(topic)
		p.brokers[topic] = b
	}
	return b, nil
}

func (p *perTopicBroker) Publish(topic string, msgs ...*message.Message) error {
	b, err := p.broker(topic)
	if err != nil {
		return err
	}
	return b.Publisher().Publish(topic, msgs...)
}

func (p *perTopicBroker) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	b, err := p.broker(topic)
	if err != nil {
		return nil, err
	}
	sub, err := b.Subscriber(topic)
	if err != nil {
		return nil, err
	}
	return sub.Subscribe(ctx, topic)
}

func (p *perTopicBroker) Close() error {
	p.mu.Lock()
	brokers := p.brokers
	p.brokers, p.closed = nil, true
	p.mu.Unlock()
	for _, b := range brokers {
		_ = b.Close()
	}
	return nil
}

type topicSet struct {
	mu     sync.Mutex
	topics map[string]bool
}

func (s *topicSet) add(topic string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.topics == nil {
		s.topics = map[string]bool{}
	}
	s.topics[topic] = true
}

func (s *topicSet) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.topics))
	for topic := range s.topics {
		out = append(out, topic)
	}
	return out
}
