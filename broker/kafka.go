package broker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventpipe/eventpipe/config"
)

// Kafka defaults for settings config.Kafka does not carry, and for zero
// values of those it does (a config.Kafka built in code, not by Load).
const (
	kafkaDefaultPartitions = 1
	// kafkaTopicReadyTimeout bounds the wait for a created topic to show up
	// in the cluster metadata.
	kafkaTopicReadyTimeout = 10 * time.Second
	// kafkaPublishRetryTimeout bounds how long Publish keeps retrying a
	// message while the cluster is unreachable (restart, leader election)
	// before it fails: a handler whose publish fails retries, then poisons
	// its message, so a short outage must not fail publishing. Sarama's own
	// retries give up on a refused connection within about a second.
	kafkaPublishRetryTimeout = 30 * time.Second
	// kafkaAckGrace lets watermill-kafka mark the offset of the last acked
	// message before a subscription's session ends.
	kafkaAckGrace = 200 * time.Millisecond
	// kafkaCloseDrainTimeout bounds how long Close waits for the messages
	// handed out to be acked or nacked (after the router closed, they are).
	kafkaCloseDrainTimeout = 2 * time.Second
	// kafkaMaxMessageBytes is the producer's record size limit.
	kafkaMaxMessageBytes = 16 << 20
	// poisonKeepBytes is how much of a payload a poison copy keeps when the
	// cluster refuses the whole record as too large.
	poisonKeepBytes = 64 << 10
	// poisonKeepValueBytes bounds each metadata value (reason_poisoned
	// included) of a poison copy refused as too large even with its payload
	// cut, and poisonKeepMetadataBytes the keys and values of its other
	// metadata together: with the payload cut too, the copy stays far below
	// any usable message.max.bytes (Kafka's default is 1 MiB).
	poisonKeepValueBytes    = 4 << 10
	poisonKeepMetadataBytes = 64 << 10
)

// Kafka is the Kafka broker: watermill-kafka (Sarama) publisher and
// subscribers sharing one configuration.
//
//   - Producing: acks=all and an idempotent producer, so a retried send is
//     written once and in order; metadata partition_key is the record key
//     (tasks: the rule's partition key, default the event id), so one key
//     keeps its order. Publish retries each message for up to 30 s, which
//     rides out a broker restart without failing the handler; a retry after
//     a lost acknowledgement can write a record twice (at-least-once: task
//     ids are de-duplicated).
//   - Consuming: one consumer group per topic, "<consumer_group>.<topic>", so
//     a rebalance of the tasks group (which waits for running tasks) never
//     pauses the events; a new group starts at the oldest offset. The offset
//     is marked when the handler acks, committed every second.
//   - Records from any producer are accepted (see kafkaMarshaler).
//   - Topics: NewKafka creates the events, tasks and results topics and
//     the poison topics of events and tasks with broker.kafka.partitions
//     (others: 1 partition); any other topic is created on first use.
//
// Concurrency: watermill-kafka keeps one message in flight per partition,
// and each partition of a subscription is consumed concurrently; the
// messages in flight of a topic are at most its partition count, however
// many handlers subscribe (extra subscriptions only split the partitions
// between more group members). Raise a topic's partitions to raise its
// concurrency; per-key order holds because a key lives on one partition.
type Kafka struct {
	cfg         config.Kafka
	logger      watermill.LoggerAdapter
	brokers     []string
	consumerCfg *sarama.Config
	admin       sarama.ClusterAdmin
	client      sarama.Client
	pub         *kafka.Publisher

	mu      sync.Mutex
	subs    map[string]*kafka.Subscriber // by topic
	created map[string]bool              // topics known to exist
	closed  bool
	done    chan struct{} // closed by Close: stops retrying publishes

	// subCtx outlives the handlers' subscriptions and ends at Close: see
	// kafkaSubscriber.Subscribe.
	subCtx   context.Context
	stopSubs context.CancelFunc
	drains   map[string]*drain // by topic: see kafkaSubscriber.Subscribe
}

// drain counts a topic's live relays and the messages they handed out and
// that are not acked or nacked yet. All of a topic's consumer sessions end
// together when it reaches zero: one member leaving the group rebalances it,
// which would end the sessions of the others while they still drain.
type drain struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed when n drops to 0; a new one when it rises again
}

func (d *drain) add(delta int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.n == 0 && delta > 0 {
		d.zero = make(chan struct{})
	}
	if d.n += delta; d.n == 0 {
		close(d.zero)
	}
}

// done is closed once the count drops to zero.
func (d *drain) done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.zero
}

func (k *Kafka) drainOf(topic string) *drain {
	k.mu.Lock()
	defer k.mu.Unlock()
	d, ok := k.drains[topic]
	if !ok {
		d = &drain{}
		k.drains[topic] = d
	}
	return d
}

// NewKafka connects to cfg.Brokers, creates the pipeline's topics (see
// Kafka) and returns the broker. It fails when no broker is reachable or a
// topic cannot be created; logger may be nil.
func NewKafka(cfg config.Kafka, topics config.Topics, logger watermill.LoggerAdapter) (*Kafka, error) {
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("broker.kafka.brokers must list at least one host:port")
	}
	for topic, n := range cfg.Partitions {
		if n < 1 {
			return nil, fmt.Errorf("broker.kafka.partitions[%s] must be >= 1, got %d", topic, n)
		}
	}
	if cfg.ConsumerGroup == "" {
		cfg.ConsumerGroup = "eventpipe"
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "eventpipe"
	}
	if cfg.ReplicationFactor < 1 {
		cfg.ReplicationFactor = 1
	}
	base, err := kafkaBaseConfig(cfg)
	if err != nil {
		return nil, err
	}
	k := &Kafka{
		cfg:         cfg,
		logger:      logger,
		brokers:     cfg.Brokers,
		consumerCfg: kafkaConsumerConfig(base),
		subs:        make(map[string]*kafka.Subscriber),
		created:     make(map[string]bool),
		done:        make(chan struct{}),
		drains:      make(map[string]*drain),
	}
	k.subCtx, k.stopSubs = context.WithCancel(context.Background())
	if k.client, err = sarama.NewClient(cfg.Brokers, base); err != nil {
		return nil, fmt.Errorf("connect to kafka brokers %v: %w", cfg.Brokers, err)
	}
	if k.admin, err = sarama.NewClusterAdminFromClient(k.client); err != nil {
		_ = k.client.Close()
		return nil, fmt.Errorf("kafka admin client: %w", err)
	}
	k.pub, err = kafka.NewPublisher(kafka.PublisherConfig{
		Brokers:               cfg.Brokers,
		Marshaler:             kafkaMarshaler{},
		OverwriteSaramaConfig: kafkaProducerConfig(base),
	}, logger)
	if err != nil {
		_ = k.admin.Close()
		return nil, fmt.Errorf("kafka producer: %w", err)
	}
	for _, topic := range []string{topics.Events, topics.Tasks, topics.Results,
		topics.Poison(topics.Events), topics.Poison(topics.Tasks)} {
		if err := k.ensureTopic(topic); err != nil {
			_ = k.Close()
			return nil, err
		}
	}
	return k, nil
}

// kafkaBaseConfig is the Sarama config shared by producer, consumers and admin.
func kafkaBaseConfig(cfg config.Kafka) (*sarama.Config, error) {
	sc := sarama.NewConfig()
	sc.ClientID = cfg.ClientID
	sc.Version = sarama.DefaultVersion // 2.8: Sarama's fully covered protocol level
	tc, err := newTLSConfig(cfg.TLS, "broker.kafka.tls")
	if err != nil {
		return nil, err
	}
	if tc != nil {
		sc.Net.TLS.Enable = true
		sc.Net.TLS.Config = tc
	}
	if err := applySASL(sc, cfg.SASL); err != nil {
		return nil, err
	}
	return sc, nil
}

// kafkaProducerConfig: acks=all plus idempotence (which needs one request
// in flight per connection, and keeps per-partition order across Sarama's
// own retries).
func kafkaProducerConfig(base *sarama.Config) *sarama.Config {
	pc := *base
	pc.Producer.RequiredAcks = sarama.WaitForAll
	pc.Producer.Idempotent = true
	pc.Net.MaxOpenRequests = 1
	pc.Producer.Return.Successes = true
	pc.Producer.Return.Errors = true
	// Sarama's 1,000,000-byte default is below event.max_bytes plus the
	// poison metadata: a poisoned large event could never be published and
	// its partition would stall. The cluster's own limit still applies
	// (see truncateForPoison).
	pc.Producer.MaxMessageBytes = kafkaMaxMessageBytes
	pc.Producer.Retry.Max = 10
	pc.Producer.Retry.BackoffFunc = func(retries, _ int) time.Duration {
		return min(100*time.Millisecond<<min(retries, 4), time.Second)
	}
	return &pc
}

// kafkaConsumerConfig: new groups start at the oldest offset (nothing
// published before the first start is skipped). Partitions are assigned
// with Sarama's default range strategy: its sticky strategy keeps state in
// the strategy value, which every consumer sharing this config would race on.
func kafkaConsumerConfig(base *sarama.Config) *sarama.Config {
	cc := *base
	cc.Consumer.Return.Errors = true
	cc.Consumer.Offsets.Initial = sarama.OffsetOldest
	return &cc
}

// ConsumerGroup returns the consumer group that consumes topic.
func (k *Kafka) ConsumerGroup(topic string) string { return k.cfg.ConsumerGroup + "." + topic }

// Partitions returns the partition count eventpipe creates topic with.
func (k *Kafka) Partitions(topic string) int {
	if n, ok := k.cfg.Partitions[topic]; ok {
		return n
	}
	return cmp.Or(k.cfg.DefaultPartitions, kafkaDefaultPartitions)
}

// Publisher returns the producer for every topic; its Close is a no-op.
func (k *Kafka) Publisher() message.Publisher { return kafkaPublisher{k} }

// Subscriber creates topic if needed and returns a subscriber whose
// Subscribe joins the topic's consumer group; its Close is a no-op.
func (k *Kafka) Subscriber(topic string) (message.Subscriber, error) {
	if err := k.ensureTopic(topic); err != nil {
		return nil, err
	}
	return kafkaSubscriber{k}, nil
}

var _ BacklogReporter = (*Kafka)(nil)

// Ping asks the cluster for its brokers.
func (k *Kafka) Ping(ctx context.Context) error {
	k.mu.Lock()
	closed := k.closed
	k.mu.Unlock()
	if closed {
		return ErrClosed
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := k.admin.DescribeCluster()
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("kafka brokers %v: %w", k.brokers, err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Backlog reports the consumer lag of every subscribed topic, per
// partition: the records after the group's committed offset (all of them
// while the group has committed none). It implements BacklogReporter.
func (k *Kafka) Backlog(ctx context.Context) ([]Backlog, error) {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil, ErrClosed
	}
	topics := slices.Sorted(maps.Keys(k.subs))
	k.mu.Unlock()
	var out []Backlog
	var errs []error
	for _, topic := range topics {
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		lag, err := k.lag(topic)
		if err != nil {
			errs = append(errs, fmt.Errorf("kafka lag of %s: %w", topic, err))
		}
		out = append(out, lag...)
	}
	return out, errors.Join(errs...)
}

func (k *Kafka) lag(topic string) ([]Backlog, error) {
	parts, err := k.client.Partitions(topic)
	if err != nil {
		return nil, err
	}
	committed, err := k.admin.ListConsumerGroupOffsets(k.ConsumerGroup(topic), map[string][]int32{topic: parts})
	if errors.Is(err, sarama.ErrGroupIDNotFound) {
		// A group that never committed: Kafka answers -1 offsets, some
		// brokers (kfake) this error. Everything is still to consume.
		committed, err = &sarama.OffsetFetchResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := make([]Backlog, 0, len(parts))
	for _, p := range parts {
		end, err := k.client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return out, err
		}
		from := int64(-1)
		if b := committed.GetBlock(topic, p); b != nil {
			from = b.Offset
		}
		if from < 0 {
			if from, err = k.client.GetOffset(topic, p, sarama.OffsetOldest); err != nil {
				return out, err
			}
		}
		out = append(out, Backlog{Topic: topic, Partition: strconv.Itoa(int(p)), Messages: max(end-from, 0)})
	}
	return out, nil
}

// Close stops every subscription, then the producer and the admin client.
func (k *Kafka) Close() error {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil
	}
	k.closed = true
	close(k.done)
	drains := slices.Collect(maps.Values(k.drains))
	k.mu.Unlock()
	// Ending the sessions at once would drop the offsets of the messages
	// acked last (watermill-kafka marks an offset only while its session
	// lives), and they would run again after a restart: wait, bounded, for
	// every topic's drain, then the grace the relays give themselves.
	if len(drains) > 0 {
		deadline := time.After(kafkaCloseDrainTimeout)
	wait:
		for _, d := range drains {
			select {
			case <-d.done():
			case <-deadline:
				break wait
			}
		}
		time.Sleep(kafkaAckGrace)
	}
	k.mu.Lock()
	k.stopSubs()
	subs := k.subs
	k.subs = nil
	k.mu.Unlock()

	var errs []error
	for topic, s := range subs {
		if err := s.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close kafka subscriber of %s: %w", topic, err))
		}
	}
	if err := k.pub.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close kafka producer: %w", err))
	}
	if err := k.admin.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close kafka admin: %w", err))
	}
	return errors.Join(errs...)
}

// ensureTopic creates topic once per process. An existing topic is fine;
// so is a cluster that refuses creation for lack of rights (the topic is
// then assumed to be managed by the operators).
func (k *Kafka) ensureTopic(topic string) error {
	if topic == "" {
		return errors.New("kafka: empty topic name")
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return ErrClosed
	}
	if k.created[topic] {
		return nil
	}
	detail := &sarama.TopicDetail{NumPartitions: int32(k.Partitions(topic)), ReplicationFactor: int16(k.cfg.ReplicationFactor)}
	err := k.admin.CreateTopic(topic, detail, false)
	switch {
	case err == nil:
		if err := k.waitForTopic(topic); err != nil {
			return err
		}
	case errors.Is(err, sarama.ErrTopicAlreadyExists):
	case errors.Is(err, sarama.ErrTopicAuthorizationFailed), errors.Is(err, sarama.ErrClusterAuthorizationFailed):
		k.logger.Info("Not allowed to create Kafka topic, assuming it exists", watermill.LogFields{"topic": topic, "err": err.Error()})
	default:
		return fmt.Errorf("create kafka topic %s (%d partitions, replication %d): %w",
			topic, detail.NumPartitions, detail.ReplicationFactor, err)
	}
	k.created[topic] = true
	return nil
}

// waitForTopic waits until the metadata lists topic with a leader for
// every partition: creation is asynchronous on a real cluster.
func (k *Kafka) waitForTopic(topic string) error {
	deadline := time.Now().Add(kafkaTopicReadyTimeout)
	for {
		err := k.client.RefreshMetadata(topic)
		if err == nil {
			parts, perr := k.client.Partitions(topic)
			writable, werr := k.client.WritablePartitions(topic)
			if perr == nil && werr == nil && len(parts) > 0 && len(writable) == len(parts) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kafka topic %s created but not ready after %s: %v", topic, kafkaTopicReadyTimeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// subscriber returns the watermill-kafka subscriber of topic's consumer group.
func (k *Kafka) subscriber(topic string) (*kafka.Subscriber, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil, ErrClosed
	}
	if s, ok := k.subs[topic]; ok {
		return s, nil
	}
	s, err := kafka.NewSubscriber(kafka.SubscriberConfig{
		Brokers:               k.brokers,
		Unmarshaler:           kafkaMarshaler{},
		OverwriteSaramaConfig: k.consumerCfg,
		ConsumerGroup:         k.ConsumerGroup(topic),
	}, k.logger)
	if err != nil {
		return nil, fmt.Errorf("kafka subscriber of %s: %w", topic, err)
	}
	k.subs[topic] = s
	return s, nil
}

// MetaPayloadTruncated on a poison message holds the original payload size
// when the broker refused the whole message and only its start was kept.
const MetaPayloadTruncated = "payload_truncated_bytes"

// MetaMetadataTruncated on a poison message lists, comma-separated, the
// metadata keys whose values were cut or that were dropped because the
// broker refused the message as too large even with its payload cut.
const MetaMetadataTruncated = "metadata_truncated"

// kafkaPublisher creates a topic before its first message; Close is a no-op (see Broker).
type kafkaPublisher struct{ k *Kafka }

// Publish sends msgs in order, one at a time, each retried until the
// cluster acknowledges it, the broker closes, or kafkaPublishRetryTimeout
// passes; one at a time so a retry never re-sends an acknowledged message
// nor overtakes an earlier one.
func (p kafkaPublisher) Publish(topic string, msgs ...*message.Message) error {
	k := p.k
	for _, msg := range msgs {
		if msg.Metadata.Get(kafka.UUIDHeaderKey) != "" {
			return fmt.Errorf("message %s: metadata %s is reserved for the message UUID", msg.UUID, kafka.UUIDHeaderKey)
		}
		deadline := time.Now().Add(k.publishTimeout())
		wait := 50 * time.Millisecond
		for {
			err := k.ensureTopic(topic)
			if err == nil {
				err = k.pub.Publish(topic, msg)
			}
			if err == nil {
				break
			}
			if errors.Is(err, ErrClosed) {
				return err
			}
			if kafkaPermanent(err) {
				// Cut a copy: msg may be the message being handled, which a
				// failed poison publish nacks and redelivers whole.
				if cut := msg.Copy(); truncateForPoison(cut, err) {
					msg = cut
					continue
				}
				return fmt.Errorf("publish %s to kafka topic %s: %w", msg.UUID, topic, err)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("publish %s to kafka topic %s (retried for %s): %w", msg.UUID, topic, k.publishTimeout(), err)
			}
			k.logger.Debug("Kafka publish failed, retrying", watermill.LogFields{"topic": topic, "message_uuid": msg.UUID, "err": err.Error()})
			select {
			case <-k.done:
				return ErrClosed
			case <-time.After(wait):
			}
			wait = min(2*wait, time.Second)
		}
	}
	return nil
}

func (kafkaPublisher) Close() error { return nil }

// kafkaPermanent reports whether retrying a publish cannot help: the record
// is too large or malformed, or this client may not write the topic.
func kafkaPermanent(err error) bool {
	var cfgErr sarama.ConfigurationError
	if errors.As(err, &cfgErr) {
		return true
	}
	for _, kerr := range []sarama.KError{sarama.ErrMessageSizeTooLarge, sarama.ErrInvalidMessage, sarama.ErrInvalidRecord,
		sarama.ErrInvalidTopic, sarama.ErrTopicAuthorizationFailed, sarama.ErrClusterAuthorizationFailed} {
		if errors.Is(err, kerr) {
			return true
		}
	}
	return false
}

// kafkaSubscriber subscribes to any topic through that topic's consumer
// group; Close is a no-op (see Broker): subscriptions end with their context.
type kafkaSubscriber struct{ k *Kafka }

func (s kafkaSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if err := s.k.ensureTopic(topic); err != nil {
		return nil, err
	}
	sub, err := s.k.subscriber(topic)
	if err != nil {
		return nil, err
	}
	// The consumer-group session outlives ctx: Router.Close ends ctx at
	// once, and watermill-kafka drops the acks of messages still being
	// handled once its session is gone, so tasks finished during a graceful
	// drain would run again after a restart. When ctx ends the handler gets
	// no more messages; the topic's sessions end together once every relay
	// of the topic has stopped and every message handed out was acked or
	// nacked (plus kafkaAckGrace for watermill-kafka to mark the offset), or
	// when the broker closes.
	sessionCtx, endSession := context.WithCancel(s.k.subCtx)
	in, err := sub.Subscribe(sessionCtx, topic)
	if err != nil {
		endSession()
		return nil, err
	}
	out := make(chan *message.Message)
	d := s.k.drainOf(topic)
	d.add(1) // this relay
	go func() {
		defer func() {
			close(out)
			d.add(-1)
			go func() {
				select {
				case <-d.done():
				case <-sessionCtx.Done():
				}
				select {
				case <-time.After(kafkaAckGrace):
				case <-sessionCtx.Done():
				}
				endSession()
			}()
		}()
		for {
			select {
			case msg, ok := <-in:
				if !ok {
					return
				}
				select {
				case out <- msg:
					d.add(1)
					go func() {
						defer d.add(-1)
						select {
						case <-msg.Acked():
						case <-msg.Nacked():
						case <-sessionCtx.Done():
						}
					}()
				case <-ctx.Done():
					return // neither acked nor nacked: redelivered later
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

func (kafkaSubscriber) Close() error { return nil }

// publishTimeout is broker.kafka.publish_timeout (see kafkaPublishRetryTimeout).
func (k *Kafka) publishTimeout() time.Duration {
	return cmp.Or(k.cfg.PublishTimeout, kafkaPublishRetryTimeout)
}

// truncateForPoison shrinks a poison message the cluster refused as too
// large, so that the failure is still recorded with its reason and the
// partition moves on instead of redelivering the message forever. First the
// payload is cut to its first poisonKeepBytes (payload_truncated_bytes says
// how big it was); if the record is still refused, its headers are what is
// too large and the metadata is cut (see truncatePoisonMetadata). It reports
// whether it changed msg: each step runs once, then Publish gives up.
func truncateForPoison(msg *message.Message, err error) bool {
	if !errors.Is(err, sarama.ErrMessageSizeTooLarge) || msg.Metadata.Get(MetaReasonPoisoned) == "" {
		return false
	}
	if len(msg.Payload) > poisonKeepBytes {
		msg.Metadata.Set(MetaPayloadTruncated, strconv.Itoa(len(msg.Payload)))
		msg.Payload = msg.Payload[:poisonKeepBytes]
		return true
	}
	return truncatePoisonMetadata(msg)
}

// truncatePoisonMetadata bounds the metadata of a poison message. The keys
// that say why it was poisoned (PoisonMetadataKeys and the truncation
// marks) are always kept, each value cut to poisonKeepValueBytes. Of the
// others, the smallest are kept first, each value cut the same way, while
// they fit in poisonKeepMetadataBytes; the rest are dropped. The keys cut or
// dropped are listed in metadata_truncated. It reports whether it changed
// msg: a second call finds nothing left to cut.
func truncatePoisonMetadata(msg *message.Message) bool {
	kept := func(k string) bool {
		return slices.Contains(PoisonMetadataKeys, k) || k == MetaPayloadTruncated || k == MetaMetadataTruncated
	}
	size := func(k string) int { return len(k) + min(len(msg.Metadata[k]), poisonKeepValueBytes) }
	keys := slices.SortedFunc(maps.Keys(msg.Metadata), func(a, b string) int {
		return cmp.Or(cmp.Compare(size(a), size(b)), cmp.Compare(a, b))
	})
	var cut []string
	used := 0
	for _, k := range keys {
		if !kept(k) {
			if used+size(k) > poisonKeepMetadataBytes {
				delete(msg.Metadata, k)
				cut = append(cut, k)
				continue
			}
			used += size(k)
		}
		if v := msg.Metadata[k]; len(v) > poisonKeepValueBytes {
			msg.Metadata[k] = cutText(v, poisonKeepValueBytes)
			cut = append(cut, k)
		}
	}
	if len(cut) == 0 {
		return false
	}
	slices.Sort(cut)
	msg.Metadata.Set(MetaMetadataTruncated, cutText(strings.Join(cut, ","), poisonKeepValueBytes))
	return true
}

// cutText returns s cut to at most n bytes at a rune boundary: metadata is
// text (reason_poisoned is shown by eventpipe dlq list), keep it valid UTF-8.
func cutText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
