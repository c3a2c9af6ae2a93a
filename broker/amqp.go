package broker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/permanent"
)

// MetaEventType is the metadata key of an event's type. On AMQP it is the
// routing key of the event on the events exchange; without it the type is
// read from the payload.
const MetaEventType = "event_type"

// AMQP defaults for settings config.AMQP does not carry, and for zero
// values of those it does (a config.AMQP built in code, not by Load).
const (
	// amqpPublishRetryTimeout bounds how long Publish keeps retrying while
	// RabbitMQ is unreachable (restart, failover) before it fails: a
	// handler whose publish fails retries, then poisons its message, so a
	// short outage must not fail publishing.
	amqpPublishRetryTimeout = 30 * time.Second
	// amqpDLXSuffix names the dead-letter exchange: <exchange>.dlx.
	amqpDLXSuffix = ".dlx"
	// amqpMaxName is the longest queue name or routing key AMQP allows.
	amqpMaxName = 255
	// amqpMaxHeaderBytes bounds a message's metadata. AMQP carries the
	// headers in one frame that cannot be split, and RabbitMQ closes the
	// whole connection (every channel of the pool) on a frame over frame_max
	// (default 128 KiB); this leaves room for the other properties. A poison
	// copy cut by truncatePoisonMetadata stays below it.
	amqpMaxHeaderBytes = 96 << 10
)

// AMQP is the RabbitMQ broker (watermill-amqp v3), with this topology:
//
//   - events: producers publish to the durable topic exchange
//     broker.amqp.exchange (business.event.exchange) with routing key =
//     event type. The durable queue named after the events topic is bound
//     to it with each of broker.amqp.binding_keys (default "#"). Publishing
//     to the events topic through eventpipe goes to that exchange too, with
//     the routing key from metadata event_type or the payload.
//   - every other topic (tasks, results, poison topics, yours) is a durable
//     queue of that name, reached through the default exchange; the tasks
//     queue has x-max-priority 10 and each task is published with its
//     priority (HIGH 9, MEDIUM 5, LOW 1).
//   - poison: every non-poison queue dead-letters to the direct exchange
//     <exchange>.dlx with routing key <queue><poison_suffix>, which is bound
//     to the poison queue of that name. eventpipe's poison middleware
//     publishes to the same queue, so messages that RabbitMQ dead-letters
//     (rejected without requeue by another tool, expired by a TTL policy,
//     dropped by a length limit) end up beside the ones eventpipe poisons.
//
// Every queue and binding is declared before the first publish to it:
// RabbitMQ confirms unroutable messages and drops them, so a message
// published before any consumer existed would otherwise be lost.
//
// Publishing: messages are persistent; Publish returns once RabbitMQ
// confirmed every message (publisher confirms), and pipelines them: all
// messages of one call are sent on one channel before their confirms are
// awaited. Channels come from a pool of broker.amqp.channel_pool_size on
// a publishing connection of their own (RabbitMQ blocks publishing
// connections under flow control, which must not stall consumers). While
// RabbitMQ is unreachable Publish redials and retries for up to 30 s, so a
// restart does not fail handlers into poisoning their messages. The pool
// is ours rather than watermill-amqp's: in v3.1.0 a pooled channel that
// fails to reopen during an outage is lost for good (Publish blocks
// forever once all are lost) and closing such a pool panics.
//
// Consuming is watermill-amqp's subscriber with manual acks after the
// handler; a nacked message is requeued (shutdown, failed poison publish),
// never dropped. The subscriber reconnects on its own and re-declares its
// queue's topology.
//
// Concurrency: each subscription (Subscribe call) has one delivery in
// flight; broker.amqp.prefetch only buffers deliveries. Several
// subscriptions on one queue, i.e. handler concurrency > 1, are what raise
// the messages in flight.
type AMQP struct {
	cfg       config.AMQP
	topics    config.Topics
	logger    watermill.LoggerAdapter
	url       string // redacted, for errors
	topology  *amqpTopology
	marshaler amqpMarshaler
	pool      *amqpPool
	subConn   *amqp.ConnectionWrapper
	sub       *amqp.Subscriber
	// ctx ends at Close and cancels retrying publishes.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	declared map[string]bool // topics whose queues exist
	closed   bool
}

// NewAMQP connects to cfg.URL (one connection for publishing, one for
// consuming) and returns the broker; it declares the topology of a topic
// when the topic is first published to or subscribed to. It fails when
// RabbitMQ is unreachable; logger may be nil.
func NewAMQP(cfg config.AMQP, topics config.Topics, logger watermill.LoggerAdapter) (*AMQP, error) {
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	redacted, err := checkAMQPConfig(cfg)
	if err != nil {
		return nil, err
	}
	tc, err := newTLSConfig(cfg.TLS, "broker.amqp.tls")
	if err != nil {
		return nil, err
	}
	topo := &amqpTopology{
		exchange:     cfg.Exchange,
		bindingKeys:  cfg.BindingKeys,
		dlx:          cfg.Exchange + amqpDLXSuffix,
		events:       topics.Events,
		tasks:        topics.Tasks,
		poisonSuffix: topics.PoisonSuffix,
	}
	a := &AMQP{
		cfg: cfg, topics: topics, logger: logger, url: redacted, topology: topo,
		marshaler: newAMQPMarshaler(), declared: make(map[string]bool),
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	dialCfg := func(name string) *amqp091.Config {
		return &amqp091.Config{
			TLSClientConfig: tc,
			Heartbeat:       10 * time.Second,
			Locale:          "en_US",
			Properties:      amqp091.Table{"connection_name": "eventpipe-" + name},
		}
	}
	a.pool = newAMQPPool(cfg.URL, *dialCfg("publisher"), cfg.ChannelPoolSize)
	if _, err := a.pool.connection(); err != nil {
		return nil, fmt.Errorf("connect to RabbitMQ at %s: %w", redacted, err)
	}
	a.subConn, err = amqp.NewConnection(amqp.ConnectionConfig{
		AmqpURI:    cfg.URL,
		AmqpConfig: dialCfg("consumer"),
		// Reconnect quickly: the default backoff grows to a minute.
		Reconnect: &amqp.ReconnectConfig{
			BackoffInitialInterval:     100 * time.Millisecond,
			BackoffRandomizationFactor: 0.5,
			BackoffMultiplier:          1.5,
			BackoffMaxInterval:         3 * time.Second,
		},
	}, logger)
	if err != nil {
		a.pool.close()
		return nil, fmt.Errorf("connect to RabbitMQ at %s: %w", redacted, err)
	}
	a.sub, err = amqp.NewSubscriberWithConnection(amqp.Config{
		Marshaler: a.marshaler,
		// The topology builder declares exchanges and bindings per topic.
		Exchange:        amqp.ExchangeConfig{GenerateName: func(string) string { return "" }},
		Queue:           amqp.QueueConfig{GenerateName: amqp.GenerateQueueNameTopicName, Durable: true},
		QueueBind:       amqp.QueueBindConfig{GenerateRoutingKey: func(string) string { return "" }},
		Consume:         amqp.ConsumeConfig{Qos: amqp.QosConfig{PrefetchCount: cfg.Prefetch}},
		TopologyBuilder: topo,
	}, logger, a.subConn)
	if err != nil {
		_ = a.Close()
		return nil, fmt.Errorf("amqp subscriber: %w", err)
	}
	return a, nil
}

// checkAMQPConfig checks what NewAMQP cannot work without and returns the
// URL without its password.
func checkAMQPConfig(cfg config.AMQP) (string, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		// Not err: url.Error quotes the URL, password included.
		return "", errors.New("broker.amqp.url is not a valid URL (not shown: it may hold a password)")
	}
	redacted := u.Redacted()
	var problems []error
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		problems = append(problems, fmt.Errorf("broker.amqp.url must start with amqp:// or amqps://, got %q", redacted))
	}
	if cfg.Exchange == "" {
		problems = append(problems, errors.New("broker.amqp.exchange must not be empty"))
	}
	if len(cfg.BindingKeys) == 0 {
		problems = append(problems, errors.New("broker.amqp.binding_keys must list at least one key"))
	}
	if cfg.Prefetch < 1 {
		problems = append(problems, fmt.Errorf("broker.amqp.prefetch must be >= 1, got %d", cfg.Prefetch))
	}
	if cfg.ChannelPoolSize < 1 {
		problems = append(problems, fmt.Errorf("broker.amqp.channel_pool_size must be >= 1, got %d", cfg.ChannelPoolSize))
	}
	return redacted, errors.Join(problems...)
}

// Publisher returns the publisher for every topic; its Close is a no-op.
func (a *AMQP) Publisher() message.Publisher { return amqpPublisher{a} }

// Subscriber declares topic's queue, bindings and poison queue and returns
// a subscriber; each Subscribe is one more consumer on the queue. Its Close
// is a no-op.
func (a *AMQP) Subscriber(topic string) (message.Subscriber, error) {
	if err := a.declare(topic); err != nil {
		return nil, err
	}
	return amqpSubscriber{a}, nil
}

// Ping reports whether both connections are up.
func (a *AMQP) Ping(context.Context) error {
	a.mu.Lock()
	closed := a.closed
	a.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if !a.pool.connected() || !a.subConn.IsConnected() {
		return fmt.Errorf("not connected to RabbitMQ at %s", a.url)
	}
	return nil
}

// Backlog reports the messages ready in every queue eventpipe declared
// (unacked deliveries are being handled, so they do not count). It
// implements BacklogReporter; a queue is one partition, "0".
func (a *AMQP) Backlog(ctx context.Context) ([]Backlog, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, ErrClosed
	}
	queues := slices.Sorted(maps.Keys(a.declared))
	a.mu.Unlock()
	conn, err := a.pool.connection()
	if err != nil {
		return nil, fmt.Errorf("queue depth on RabbitMQ at %s: %w", a.url, err)
	}
	var out []Backlog
	var errs []error
	var ch *amqp091.Channel
	defer func() {
		if ch != nil {
			_ = ch.Close()
		}
	}()
	for _, q := range queues {
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		if ch == nil || ch.IsClosed() {
			// A failed passive declare (queue deleted) closes the channel.
			if ch, err = conn.Channel(); err != nil {
				return out, errors.Join(append(errs, fmt.Errorf("queue depth: open channel: %w", err))...)
			}
		}
		info, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("queue depth of %s: %w", q, err))
			continue
		}
		out = append(out, Backlog{Topic: q, Partition: "0", Messages: int64(info.Messages)})
	}
	return out, errors.Join(errs...)
}

var _ BacklogReporter = (*AMQP)(nil)

// Close stops every subscription and closes the publisher and both connections.
func (a *AMQP) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.mu.Unlock()
	a.cancel()
	var errs []error
	if a.sub != nil {
		if err := a.sub.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close amqp subscriber: %w", err))
		}
	}
	if err := a.subConn.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close amqp consumer connection: %w", err))
	}
	a.pool.close()
	return errors.Join(errs...)
}

// declare declares topic's topology once, on the publishing connection.
func (a *AMQP) declare(topic string) error {
	if err := checkQueueName(topic); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return ErrClosed
	}
	if a.declared[topic] {
		return nil
	}
	conn, err := a.pool.connection()
	if err != nil {
		return fmt.Errorf("declare %s on RabbitMQ at %s: %w", topic, a.url, err)
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("declare %s: open channel: %w", topic, err)
	}
	defer func() { _ = ch.Close() }()
	if err := a.topology.declare(ch, topic); err != nil {
		return err
	}
	a.declared[topic] = true
	return nil
}

func checkQueueName(topic string) error {
	if topic == "" || len(topic) > amqpMaxName {
		return fmt.Errorf("amqp: topic %q is not a queue name (1 to %d bytes)", topic, amqpMaxName)
	}
	return nil
}

// forget makes the next publish to topic declare its topology again.
func (a *AMQP) forget(topic string) {
	a.mu.Lock()
	delete(a.declared, topic)
	a.mu.Unlock()
}

// publish publishes msgs of topic to exchange with routing key key and
// waits for their confirms, retrying what was not confirmed until the
// broker closes or amqpPublishRetryTimeout passes.
func (a *AMQP) publish(topic, exchange, key string, msgs []*message.Message) error {
	if err := checkQueueName(topic); err != nil {
		return err
	}
	pubs := make([]amqp091.Publishing, len(msgs))
	for i, m := range msgs {
		if err := checkHeaderSize(m); err != nil {
			return err
		}
		p, err := a.marshaler.Marshal(m)
		if err != nil {
			return fmt.Errorf("marshal message %s: %w", m.UUID, err)
		}
		pubs[i] = p
	}
	ctx, cancel := context.WithTimeout(a.ctx, cmp.Or(a.cfg.PublishTimeout, amqpPublishRetryTimeout))
	defer cancel()
	wait := 50 * time.Millisecond
	for {
		err := a.declare(topic)
		if err == nil {
			pubs, err = a.pool.publish(ctx, exchange, key, pubs)
		}
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrClosed) || a.ctx.Err() != nil {
			return ErrClosed
		}
		if ctx.Err() != nil {
			return fmt.Errorf("publish %d messages to %s on RabbitMQ at %s (retried for %s): %w",
				len(pubs), topic, a.url, cmp.Or(a.cfg.PublishTimeout, amqpPublishRetryTimeout), err)
		}
		// Someone may have deleted the exchange or queue (RabbitMQ then
		// closes the channel, or drops unroutable messages): declare again.
		a.forget(topic)
		a.logger.Debug("AMQP publish failed, retrying", watermill.LogFields{"topic": topic, "err": err.Error()})
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// checkHeaderSize refuses, as a permanent error, a message whose metadata
// is over amqpMaxHeaderBytes, naming the largest key. A poison copy is cut
// instead (its headers are the original's, which RabbitMQ took, grown by
// the reason and by tables turned into JSON): it must still get through.
func checkHeaderSize(m *message.Message) error {
	size, largest := 0, ""
	for k, v := range m.Metadata {
		size += len(k) + len(v) + 6 // key length byte, type byte, value length
		if largest == "" || len(v) > len(m.Metadata[largest]) {
			largest = k
		}
	}
	if size <= amqpMaxHeaderBytes {
		return nil
	}
	if m.Metadata.Get(MetaReasonPoisoned) != "" && truncatePoisonMetadata(m) {
		return checkHeaderSize(m)
	}
	return permanent.Wrap(fmt.Errorf("message %s: metadata of %d bytes is over the %d an AMQP header frame may carry here (largest: %q, %d bytes)",
		m.UUID, size, amqpMaxHeaderBytes, clipKey(largest), len(m.Metadata[largest])))
}

// clipKey shortens a metadata key for an error message.
func clipKey(k string) string {
	if len(k) > 64 {
		return cutText(k, 64) + "…"
	}
	return k
}

// amqpPublisher routes events to the events exchange and everything else
// to the queue of its topic; Close is a no-op (see Broker).
type amqpPublisher struct{ a *AMQP }

func (p amqpPublisher) Publish(topic string, msgs ...*message.Message) error {
	a := p.a
	if topic != a.topics.Events {
		return a.publish(topic, "", topic, msgs)
	}
	for _, m := range msgs {
		if key := eventRoutingKey(m); len(key) > amqpMaxName {
			return fmt.Errorf("event %s: event type of %d bytes cannot be an AMQP routing key (at most %d)", m.UUID, len(key), amqpMaxName)
		}
	}
	for i := 0; i < len(msgs); {
		// Consecutive events of one type go out together, in order.
		key := eventRoutingKey(msgs[i])
		j := i + 1
		for j < len(msgs) && eventRoutingKey(msgs[j]) == key {
			j++
		}
		if err := a.publish(topic, a.cfg.Exchange, key, msgs[i:j]); err != nil {
			return err
		}
		i = j
	}
	return nil
}

func (amqpPublisher) Close() error { return nil }

// amqpSubscriber consumes the queue of any topic; Close is a no-op (see
// Broker): subscriptions end with their context.
type amqpSubscriber struct{ a *AMQP }

func (s amqpSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if err := s.a.declare(topic); err != nil {
		return nil, err
	}
	return s.a.sub.Subscribe(ctx, topic)
}

func (amqpSubscriber) Close() error { return nil }

// amqpTopology declares eventpipe's queues, exchanges and bindings (see
// AMQP). It is watermill-amqp's TopologyBuilder, so the subscriber
// re-declares a queue's topology after every reconnect.
type amqpTopology struct {
	exchange     string
	bindingKeys  []string
	dlx          string
	events       string
	tasks        string
	poisonSuffix string
}

var _ amqp.TopologyBuilder = (*amqpTopology)(nil)

// BuildTopology declares the topology of params.Topic.
func (t *amqpTopology) BuildTopology(ch *amqp091.Channel, params amqp.BuildTopologyParams, _ amqp.Config, _ watermill.LoggerAdapter) error {
	return t.declare(ch, params.Topic)
}

// ExchangeDeclare declares the events exchange, the only one eventpipe publishes to by name.
func (t *amqpTopology) ExchangeDeclare(ch *amqp091.Channel, name string, _ amqp.Config) error {
	if err := ch.ExchangeDeclare(name, amqp091.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare topic exchange %s: %w", name, err)
	}
	return nil
}

func (t *amqpTopology) isPoison(topic string) bool {
	return t.poisonSuffix != "" && strings.HasSuffix(topic, t.poisonSuffix)
}

// queueArgs returns the arguments topic's queue is declared with.
func (t *amqpTopology) queueArgs(topic string) amqp091.Table {
	args := amqp091.Table{}
	if !t.isPoison(topic) && t.poisonSuffix != "" {
		args["x-dead-letter-exchange"] = t.dlx
		args["x-dead-letter-routing-key"] = topic + t.poisonSuffix
	}
	if topic == t.tasks {
		args["x-max-priority"] = int32(amqpMaxPriority)
	}
	return args
}

func (t *amqpTopology) declare(ch *amqp091.Channel, topic string) error {
	if t.poisonSuffix != "" {
		if err := ch.ExchangeDeclare(t.dlx, amqp091.ExchangeDirect, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare dead-letter exchange %s: %w", t.dlx, err)
		}
		poison := topic
		if !t.isPoison(topic) {
			poison = topic + t.poisonSuffix
		}
		if err := t.queue(ch, poison); err != nil {
			return err
		}
		if err := ch.QueueBind(poison, poison, t.dlx, false, nil); err != nil {
			return fmt.Errorf("bind queue %s to %s: %w", poison, t.dlx, err)
		}
		if poison == topic {
			return nil
		}
	}
	if err := t.queue(ch, topic); err != nil {
		return err
	}
	if topic != t.events {
		return nil
	}
	if err := t.ExchangeDeclare(ch, t.exchange, amqp.Config{}); err != nil {
		return err
	}
	for _, key := range t.bindingKeys {
		if err := ch.QueueBind(topic, key, t.exchange, false, nil); err != nil {
			return fmt.Errorf("bind queue %s to %s with key %q: %w", topic, t.exchange, key, err)
		}
	}
	return nil
}

func (t *amqpTopology) queue(ch *amqp091.Channel, name string) error {
	args := t.queueArgs(name)
	if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		return fmt.Errorf("declare durable queue %s with arguments %v (a queue declared earlier with other arguments must be deleted first): %w",
			name, args, err)
	}
	return nil
}
