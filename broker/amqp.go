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
	// amqpCloseTimeout bounds closing a connection: a blocked or dead
	// RabbitMQ does not answer connection.close.
	amqpCloseTimeout = 2 * time.Second
	// amqpDroppedKey is the routing key on <exchange>.dlx of messages
	// RabbitMQ drops from a bounded queue (results, poison queues).
	amqpDroppedKey = "eventpipe.dropped"
)

// AMQP is the RabbitMQ broker, on amqp091-go, with this topology:
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
//   - poison: every work queue dead-letters to the direct exchange
//     <exchange>.dlx with routing key <queue><poison_suffix>, which is bound
//     to the poison queue of that name. eventpipe's poison middleware
//     publishes to the same queue, so messages that RabbitMQ dead-letters
//     (rejected without requeue by another tool, expired by a TTL policy)
//     end up beside the ones eventpipe poisons.
//   - bounded queues: the results queue and the poison queues keep at most
//     broker.amqp.results_max_length / poison_max_length messages, for at
//     most results_max_age / poison_max_age; RabbitMQ drops the oldest
//     beyond that and dead-letters them to <exchange>.dlx with routing key
//     eventpipe.dropped, where eventpipe counts them (queue_dropped_total)
//     and logs them.
//
// Every queue and binding is declared before the first publish to it.
//
// Publishing: messages are persistent and mandatory, with publisher
// confirms, pipelined: a Publish sends all its messages, other handlers
// send theirs on the same channels meanwhile, and confirms are matched by
// delivery tag (see amqpPubChannel), so RabbitMQ confirms many messages per
// disk sync. Publish returns once RabbitMQ confirmed each message. A nack
// is retried; a message RabbitMQ returns as unroutable makes eventpipe
// declare the topic's topology again (a deleted queue comes back) and
// retry once, then fails with ErrUnroutable (permanent). While RabbitMQ is
// unreachable Publish redials and retries for broker.amqp.publish_timeout;
// while it blocks the connection (memory or disk alarm) Publish fails at
// once with ErrBlocked. Publishing has a connection of its own: RabbitMQ
// blocks publishing connections, which must not stall consumers' acks.
//
// Consuming: one consumer per queue and process with
// broker.amqp.prefetch deliveries, all handed out at once (see
// amqpConsumer); manual acks after the handler; a nack requeues, never
// drops. Tasks with the same partition key are handled one at a time, in
// queue order.
//
// Both connections gather their frames into few write syscalls (see
// corkedConn).
type AMQP struct {
	cfg       config.AMQP
	topics    config.Topics
	logger    watermill.LoggerAdapter
	url       string // redacted, for errors
	topology  *amqpTopology
	marshaler amqpMarshaler
	pub       *amqpPubConn
	stats     *amqpStats
	dialCfg   amqp091.Config
	// ctx ends at Close and cancels retrying publishes and consumers.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	declared  map[string]bool // topics whose queues exist
	consumers map[string]*amqpConsumer
	subConn   *amqp091.Connection
	dialMu    sync.Mutex // one dial of subConn at a time
	closed    bool
	wg        sync.WaitGroup // consumers and the drop counter
}

// NewAMQP connects to cfg.URL (one connection for publishing, one for
// consuming) and returns the broker; it declares the topology of a topic
// when the topic is first published to or subscribed to. It fails when RabbitMQ is unreachable; logger may
// be nil.
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
		results:      topics.Results,
		poisonSuffix: topics.PoisonSuffix,
		cfg:          cfg,
	}
	a := &AMQP{
		cfg: cfg, topics: topics, logger: logger, url: redacted, topology: topo,
		marshaler: newAMQPMarshaler(), declared: make(map[string]bool),
		consumers: make(map[string]*amqpConsumer), stats: newAMQPStats(),
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	dialCfg := func(name string) amqp091.Config {
		return amqp091.Config{
			TLSClientConfig: tc,
			Heartbeat:       10 * time.Second,
			Locale:          "en_US",
			Properties:      amqp091.Table{"connection_name": "eventpipe-" + name},
			Dial:            dialCorked,
		}
	}
	a.dialCfg = dialCfg("consumer")
	a.pub = newAMQPPubConn(cfg.URL, dialCfg("publisher"), cfg.ChannelPoolSize, a.stats)
	if _, err := a.pub.connection(); err != nil {
		return nil, fmt.Errorf("connect to RabbitMQ at %s: %w", redacted, err)
	}
	if _, err := a.consumerConnection(); err != nil {
		a.pub.close()
		return nil, fmt.Errorf("connect to RabbitMQ at %s: %w", redacted, err)
	}
	if topo.poisonSuffix != "" {
		a.wg.Add(1)
		go a.countDropped()
	}
	return a, nil
}

// consumerConnection returns the consuming connection, dialling a new one
// if RabbitMQ closed the last. One caller dials (without holding a.mu, so
// Close never waits for a dial); the others wait for it.
func (a *AMQP) consumerConnection() (*amqp091.Connection, error) {
	a.dialMu.Lock()
	defer a.dialMu.Unlock()
	a.mu.Lock()
	closed, conn := a.closed, a.subConn
	a.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	if conn != nil && !conn.IsClosed() {
		return conn, nil
	}
	conn, err := amqp091.DialConfig(a.cfg.URL, a.dialCfg)
	if err != nil {
		return nil, fmt.Errorf("connect to RabbitMQ at %s: %w", a.url, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		_ = closeAMQPConn(conn)
		return nil, ErrClosed
	}
	a.subConn = conn
	return conn, nil
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
	if cfg.Prefetch < 1 || cfg.Prefetch > 65535 {
		problems = append(problems, fmt.Errorf("broker.amqp.prefetch must be 1 to 65535, got %d", cfg.Prefetch))
	}
	if cfg.ChannelPoolSize < 1 {
		problems = append(problems, fmt.Errorf("broker.amqp.channel_pool_size must be >= 1, got %d", cfg.ChannelPoolSize))
	}
	return redacted, errors.Join(problems...)
}

// Publisher returns the publisher for every topic; its Close is a no-op.
func (a *AMQP) Publisher() message.Publisher { return amqpPublisher{a} }

// Subscriber declares topic's queue, bindings and poison queue and returns
// a subscriber. All Subscribe calls on a topic share the process's one
// consumer of its queue (see amqpConsumer). Its Close is a no-op.
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
	a.mu.Lock()
	subUp := a.subConn != nil && !a.subConn.IsClosed()
	a.mu.Unlock()
	if !a.pub.connected() || !subUp {
		return fmt.Errorf("not connected to RabbitMQ at %s", a.url)
	}
	return nil
}

// Backlog reports the messages ready in every queue eventpipe declared,
// the results queue and the poison queues included (unacked deliveries
// are being handled, so they do not count). It implements
// BacklogReporter; a queue is one partition, "0".
func (a *AMQP) Backlog(ctx context.Context) ([]Backlog, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, ErrClosed
	}
	// The results queue counts even before this process published to it.
	names := map[string]bool{a.topics.Results: true}
	for q := range a.declared {
		names[q] = true
		if a.topology.poisonSuffix != "" && !a.topology.isPoison(q) {
			names[q+a.topology.poisonSuffix] = true
		}
	}
	a.mu.Unlock()
	queues := slices.Sorted(maps.Keys(names))
	conn, err := a.pub.connection()
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
		var aerr *amqp091.Error
		if errors.As(err, &aerr) && aerr.Code == amqp091.NotFound && !a.isDeclared(q) {
			continue // not declared yet by anyone
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("queue depth of %s: %w", q, err))
			continue
		}
		out = append(out, Backlog{Topic: q, Partition: "0", Messages: int64(info.Messages)})
	}
	return out, errors.Join(errs...)
}

var _ BacklogReporter = (*AMQP)(nil)

// Close stops every consumer and closes both connections. Publishes and
// consumers in flight end with ErrClosed; unacked deliveries go back to
// their queues.
func (a *AMQP) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	subConn := a.subConn
	a.mu.Unlock()
	a.cancel()
	a.wg.Wait()
	var errs []error
	if subConn != nil {
		if err := closeAMQPConn(subConn); err != nil {
			errs = append(errs, fmt.Errorf("close amqp consumer connection: %w", err))
		}
	}
	a.pub.close()
	return errors.Join(errs...)
}

// closeAMQPConn closes conn within amqpCloseTimeout: a blocked or dead
// peer does not answer connection.close.
func closeAMQPConn(conn *amqp091.Connection) error {
	err := conn.CloseDeadline(time.Now().Add(amqpCloseTimeout))
	if errors.Is(err, amqp091.ErrClosed) {
		return nil
	}
	return err
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
	conn, err := a.pub.connection()
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

func (a *AMQP) isDeclared(topic string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.declared[topic]
}

// forget makes the next publish to topic declare its topology again.
func (a *AMQP) forget(topic string) {
	a.mu.Lock()
	delete(a.declared, topic)
	a.mu.Unlock()
}

// publish publishes msgs of topic to exchange with routing key key and
// waits for their confirms, retrying what failed until the broker closes or
// broker.amqp.publish_timeout passes. A message RabbitMQ returns as
// unroutable is retried once after declaring topic's topology again, then
// is a permanent ErrUnroutable. While RabbitMQ blocks publishing, publish
// fails at once with ErrBlocked.
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
	timeout := cmp.Or(a.cfg.PublishTimeout, amqpPublishRetryTimeout)
	ctx, cancel := context.WithTimeout(a.ctx, timeout)
	defer cancel()
	wait := 50 * time.Millisecond
	redeclared := false
	for {
		err := a.declare(topic)
		var errs []error
		if err == nil {
			errs, err = a.pub.publish(ctx, exchange, key, true, pubs)
		}
		if err == nil {
			var failed []amqp091.Publishing
			var unroutable, other error
			for i, e := range errs {
				switch {
				case e == nil:
				case errors.Is(e, ErrUnroutable):
					failed, unroutable = append(failed, pubs[i]), e
				default:
					failed, other = append(failed, pubs[i]), e
				}
			}
			if len(failed) == 0 {
				return nil
			}
			pubs = failed
			if other == nil && !redeclared {
				// A deleted queue or binding: declare it again, at once.
				redeclared = true
				a.forget(topic)
				continue
			}
			if other == nil {
				a.stats.unroutable.Add(uint64(len(failed)))
				return permanent.Wrap(fmt.Errorf("publish %d messages of %s to exchange %q with routing key %q: %w",
					len(failed), topic, exchange, key, unroutable))
			}
			err = other
		}
		switch {
		case errors.Is(err, ErrClosed) || a.ctx.Err() != nil:
			return ErrClosed
		case errors.Is(err, ErrBlocked):
			return fmt.Errorf("publish %d messages to %s on RabbitMQ at %s: %w", len(pubs), topic, a.url, err)
		case ctx.Err() != nil:
			return fmt.Errorf("publish %d messages to %s on RabbitMQ at %s (retried for %s): %w",
				len(pubs), topic, a.url, timeout, err)
		}
		// Someone may have deleted the exchange or queue (RabbitMQ then
		// closes the channel): declare again.
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
	a := s.a
	if err := a.declare(topic); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, ErrClosed
	}
	c := a.consumers[topic]
	if c == nil {
		c = a.startConsumer(topic)
		a.consumers[topic] = c
		a.wg.Add(1)
		go func() { <-c.done; a.wg.Done() }()
	}
	c.refs++
	return c.subscribe(ctx), nil
}

// release ends a subscription of c; the last one stops c.
func (a *AMQP) release(c *amqpConsumer) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c.refs--; c.refs == 0 {
		c.stop()
		if a.consumers[c.topic] == c {
			delete(a.consumers, c.topic)
		}
	}
}

func (amqpSubscriber) Close() error { return nil }

// amqpTopology declares eventpipe's queues, exchanges and bindings (see
// AMQP). Consumers declare their queue's topology again on every new
// channel, so a deleted queue comes back.
type amqpTopology struct {
	exchange     string
	bindingKeys  []string
	dlx          string
	events       string
	tasks        string
	results      string
	poisonSuffix string
	cfg          config.AMQP
}

// declareExchange declares the events exchange, the only one eventpipe publishes to by name.
func (t *amqpTopology) declareExchange(ch *amqp091.Channel, name string) error {
	if err := ch.ExchangeDeclare(name, amqp091.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare topic exchange %s: %w", name, err)
	}
	return nil
}

func (t *amqpTopology) isPoison(topic string) bool {
	return t.poisonSuffix != "" && strings.HasSuffix(topic, t.poisonSuffix)
}

// queueArgs returns the arguments topic's queue is declared with: work
// queues dead-letter to their poison queue; the results and poison queues
// are bounded, and what RabbitMQ drops from them is dead-lettered to
// amqpDroppedKey to be counted.
func (t *amqpTopology) queueArgs(topic string) amqp091.Table {
	args := amqp091.Table{}
	bound := func(maxLen int, maxAge time.Duration) {
		if t.poisonSuffix != "" {
			args["x-dead-letter-exchange"] = t.dlx
			args["x-dead-letter-routing-key"] = amqpDroppedKey
		}
		if maxLen > 0 {
			args["x-max-length"] = int64(maxLen)
		}
		if maxAge > 0 {
			args["x-message-ttl"] = max(maxAge.Milliseconds(), 1)
		}
	}
	switch {
	case t.isPoison(topic):
		bound(t.cfg.PoisonMaxLength, t.cfg.PoisonMaxAge)
	case topic == t.results:
		bound(t.cfg.ResultsMaxLength, t.cfg.ResultsMaxAge)
	case t.poisonSuffix != "":
		args["x-dead-letter-exchange"] = t.dlx
		args["x-dead-letter-routing-key"] = topic + t.poisonSuffix
	}
	if topic == t.tasks {
		args["x-max-priority"] = int32(amqpMaxPriority)
		if t.cfg.SingleActiveConsumer {
			args["x-single-active-consumer"] = true
		}
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
	if err := t.declareExchange(ch, t.exchange); err != nil {
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
