package broker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/eventpipe/eventpipe/config"
)

// Kafka defaults for settings config.Kafka does not carry, and for zero
// values of those it does (a config.Kafka built in code, not by Load).
const (
	kafkaDefaultPartitions = 1
	// kafkaTopicReadyTimeout bounds the wait for a created topic to show up
	// in the cluster metadata, and each admin request.
	kafkaTopicReadyTimeout = 10 * time.Second
	// kafkaPublishRetryTimeout bounds how long a record may wait for the
	// cluster (restart, leader election) before its Publish fails: a handler
	// whose publish fails retries, then poisons its message, so a short
	// outage must not fail publishing. The client retries within it.
	kafkaPublishRetryTimeout = 30 * time.Second
	// kafkaCloseDrainTimeout bounds how long Close waits for the records in
	// flight to be acked or nacked (after the router closed, they are).
	kafkaCloseDrainTimeout = 2 * time.Second
	// kafkaMaxRecordBatchBytes is the producer's batch (and so record) size
	// limit for a topic whose max.message.bytes cannot be read: Kafka's
	// default. A batch above the topic's limit fails whole, so the limit is
	// the topic's own (see topicMaxBytes); a larger record fails at once as
	// too large (and a poison copy is cut, see truncateForPoison).
	kafkaMaxRecordBatchBytes = 1048588
	// kafkaProducerLinger: none. While produce requests are in flight (up
	// to five per broker) the records of every handler batch up behind them
	// anyway, and a linger only adds to each handler's wait (measured: 2 ms
	// of linger cost 13% of end-to-end throughput).
	kafkaProducerLinger = 0
)

// Kafka is the Kafka broker, on franz-go: one producing client shared by
// every publisher, and one group-consuming client per consumed topic.
//
//   - Producing: acks=all and an idempotent producer, batched and pipelined
//     (up to five requests in flight per broker; records published while
//     they are in flight share the next request), so the Publish calls of
//     many handlers become a few requests; a Publish returns once its
//     records are acknowledged.
//     Metadata partition_key is the record key (tasks: the rule's partition
//     key, default the event id), hashed as Sarama does, so one key keeps
//     its partition and its order. The client retries a record for up to
//     publish_timeout (30 s), which rides out a broker restart.
//   - Consuming: one consumer group per topic, "<consumer_group>.<topic>",
//     so a rebalance of the tasks group never pauses the events; a new group
//     starts at the oldest offset. Many records are in flight per partition,
//     ordered per key, committed below the lowest unfinished one (see
//     kafkaConsumer); rebalancing is cooperative.
//   - Records from any producer are accepted (see unmarshalRecord).
//   - Topics: NewKafka creates the events, tasks and results topics and the
//     poison topics of events and tasks with broker.kafka.partitions
//     (others: 1 partition); any other topic is created on first use.
//
// Concurrency: a topic's records in flight are as many as its live
// subscriptions (the pipeline subscribes trigger.concurrency and
// executor.concurrency handlers), whatever the partition count.
type Kafka struct {
	cfg    config.Kafka
	logger watermill.LoggerAdapter
	client *kgo.Client // producing, metadata and admin
	admin  *kadm.Client
	ctx    context.Context // ends at Close: stops publishing
	cancel context.CancelFunc

	mu        sync.Mutex
	consumers map[string]*kafkaConsumer // by topic
	created   map[string]bool           // topics known to exist
	closed    bool

	maxBytes sync.Map  // topic → its max.message.bytes (int32), read by ensureTopic
	baseOpts []kgo.Opt // seed brokers, client id, TLS, SASL, logging: see clientOpts
	// brokerMaxBytes is the brokers' message.max.bytes: 0 not asked yet,
	// -1 unknown. Guarded by mu (readMaxBytes runs under ensureTopic's lock).
	brokerMaxBytes int32
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
	cfg.ConsumerGroup = cmp.Or(cfg.ConsumerGroup, "eventpipe")
	cfg.ClientID = cmp.Or(cfg.ClientID, "eventpipe")
	cfg.ReplicationFactor = max(cfg.ReplicationFactor, 1)
	k := &Kafka{cfg: cfg, logger: logger, consumers: make(map[string]*kafkaConsumer), created: make(map[string]bool)}
	base, err := k.securityOpts()
	if err != nil {
		return nil, err
	}
	k.baseOpts = base
	opts := append(k.clientOpts(),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchMaxBytesFn(k.topicMaxBytes),
		kgo.ProducerLinger(kafkaProducerLinger),
		kgo.RecordDeliveryTimeout(k.publishTimeout()),
		// Sarama's hash of the key, as eventpipe produced before: a key
		// stays on its partition (and in order) across the upgrade.
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(kgo.SaramaCompatHasher(fnv32a))),
	)
	if k.client, err = kgo.NewClient(opts...); err != nil {
		return nil, fmt.Errorf("kafka client for %v: %w", cfg.Brokers, err)
	}
	k.admin = kadm.NewClient(k.client)
	k.ctx, k.cancel = context.WithCancel(context.Background())
	pingCtx, cancel := context.WithTimeout(k.ctx, kafkaTopicReadyTimeout)
	defer cancel()
	if err := k.client.Ping(pingCtx); err != nil {
		k.client.Close()
		return nil, fmt.Errorf("connect to kafka brokers %v: %w", cfg.Brokers, err)
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

func fnv32a(b []byte) uint32 {
	h := fnv.New32a()
	_, _ = h.Write(b)
	return h.Sum32()
}

// clientOpts returns the options every client of the broker shares, built
// once by NewKafka (TLS files are read there, not per client).
func (k *Kafka) clientOpts() []kgo.Opt { return slices.Clone(k.baseOpts) }

// securityOpts: seed brokers, client id, TLS, SASL, logging.
func (k *Kafka) securityOpts() ([]kgo.Opt, error) {
	opts := []kgo.Opt{
		kgo.SeedBrokers(k.cfg.Brokers...),
		kgo.ClientID(k.cfg.ClientID),
		kgo.WithLogger(kgoLogger{k.logger}),
	}
	tc, err := newTLSConfig(k.cfg.TLS, "broker.kafka.tls")
	if err != nil {
		return nil, err
	}
	if tc != nil {
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	mech, err := saslMechanism(k.cfg.SASL)
	if err != nil {
		return nil, err
	}
	if mech != nil {
		opts = append(opts, kgo.SASL(mech))
	}
	return opts, nil
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

// Ping asks a broker of the cluster for its metadata.
func (k *Kafka) Ping(ctx context.Context) error {
	if k.isClosed() {
		return ErrClosed
	}
	if err := k.client.Ping(ctx); err != nil {
		return fmt.Errorf("kafka brokers %v: %w", k.cfg.Brokers, err)
	}
	return nil
}

func (k *Kafka) isClosed() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.closed
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
	topics := slices.Sorted(maps.Keys(k.consumers))
	k.mu.Unlock()
	var out []Backlog
	var errs []error
	for _, topic := range topics {
		pending, err := k.pending(ctx, topic, k.ConsumerGroup(topic))
		if err != nil {
			errs = append(errs, fmt.Errorf("kafka lag of %s: %w", topic, err))
			continue
		}
		for _, r := range pending {
			out = append(out, Backlog{Topic: topic, Partition: strconv.Itoa(int(r.partition)), Messages: r.to - r.from})
		}
	}
	return out, errors.Join(errs...)
}

// offsetRange is the records of one partition after a group's committed
// offset: offsets [from, to).
type offsetRange struct {
	partition int32
	from, to  int64
}

// pending returns, per partition of topic (sorted), the records after
// group's committed offset, from the oldest record kept while the group has
// committed none (or less than what retention kept). A topic that does not
// exist has none.
func (k *Kafka) pending(ctx context.Context, topic, group string) ([]offsetRange, error) {
	ctx, cancel := context.WithTimeout(ctx, kafkaTopicReadyTimeout)
	defer cancel()
	starts, err := k.admin.ListStartOffsets(ctx, topic)
	if err != nil {
		return nil, err
	}
	if errors.Is(starts.Error(), kerr.UnknownTopicOrPartition) {
		return nil, nil
	}
	ends, err := k.admin.ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, err
	}
	committed, err := k.admin.FetchOffsets(ctx, group)
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
		return nil, fmt.Errorf("offsets of group %s: %w", group, err)
	}
	var out []offsetRange
	var errs []error
	for p, start := range starts[topic] {
		end, ok := ends.Lookup(topic, p)
		if start.Err != nil || !ok || end.Err != nil {
			errs = append(errs, fmt.Errorf("offsets of %s/%d: %w", topic, p, cmp.Or(start.Err, end.Err)))
			continue
		}
		from := start.Offset
		if c, ok := committed.Lookup(topic, p); ok && c.Err == nil && c.At > from {
			from = c.At
		}
		out = append(out, offsetRange{partition: p, from: from, to: max(end.Offset, from)})
	}
	slices.SortFunc(out, func(a, b offsetRange) int { return cmp.Compare(a.partition, b.partition) })
	return out, errors.Join(errs...)
}

// Close stops every consumer (each waits, bounded, for its records in
// flight and commits what finished), then flushes and closes the producer.
func (k *Kafka) Close() error {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil
	}
	k.closed = true
	consumers := slices.Collect(maps.Values(k.consumers))
	k.consumers = nil
	k.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range consumers {
		wg.Go(func() { c.close(kafkaCloseDrainTimeout) })
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), kafkaCloseDrainTimeout)
	defer cancel()
	err := k.client.Flush(ctx)
	k.cancel()
	k.client.Close()
	if err != nil {
		return fmt.Errorf("flush kafka producer: %w", err)
	}
	return nil
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
	ctx, cancel := context.WithTimeout(k.ctx, kafkaTopicReadyTimeout)
	defer cancel()
	parts, repl := int32(k.Partitions(topic)), int16(k.cfg.ReplicationFactor)
	resp, err := k.admin.CreateTopic(ctx, parts, repl, nil, topic)
	if err == nil {
		err = resp.Err
	}
	switch {
	case err == nil:
		if err := k.waitForTopic(ctx, topic); err != nil {
			return err
		}
	case errors.Is(err, kerr.TopicAlreadyExists):
	case errors.Is(err, kerr.TopicAuthorizationFailed), errors.Is(err, kerr.ClusterAuthorizationFailed):
		k.logger.Info("Not allowed to create Kafka topic, assuming it exists", watermill.LogFields{"topic": topic, "err": err.Error()})
	default:
		return fmt.Errorf("create kafka topic %s (%d partitions, replication %d): %w", topic, parts, repl, err)
	}
	k.readMaxBytes(ctx, topic)
	k.created[topic] = true
	return nil
}

// readMaxBytes reads topic's record size limit, the producer's batch limit
// for it: a poison copy of a large event then fits whenever the topic takes
// it. The limit is the topic's max.message.bytes where the topic sets one,
// else the broker's message.max.bytes (what a topic without its own value
// enforces). Without either (no rights, an old broker) Kafka's default applies.
func (k *Kafka) readMaxBytes(ctx context.Context, topic string) {
	limit := func(v *string) (int32, bool) {
		if v == nil {
			return 0, false
		}
		n, err := strconv.ParseInt(*v, 10, 32)
		return int32(n), err == nil && n >= 512
	}
	rcs, err := k.admin.DescribeTopicConfigs(ctx, topic)
	if err != nil {
		return
	}
	for _, rc := range rcs {
		for _, c := range rc.Configs {
			if rc.Err != nil || c.Key != "max.message.bytes" {
				continue
			}
			if n, ok := limit(c.Value); ok && c.Source != kmsg.ConfigSourceDefaultConfig {
				k.maxBytes.Store(topic, n)
				return
			}
		}
	}
	if k.brokerMaxBytes == 0 {
		k.brokerMaxBytes = -1 // asked once, answered or not
		if bcs, err := k.admin.DescribeBrokerConfigs(ctx); err == nil {
			for _, rc := range bcs {
				for _, c := range rc.Configs {
					if n, ok := limit(c.Value); ok && rc.Err == nil && c.Key == "message.max.bytes" {
						k.brokerMaxBytes = n
					}
				}
			}
		}
	}
	if k.brokerMaxBytes > 0 {
		k.maxBytes.Store(topic, k.brokerMaxBytes)
	}
}

// topicMaxBytes is the producer's batch limit for topic (see readMaxBytes).
func (k *Kafka) topicMaxBytes(topic string) int32 {
	if n, ok := k.maxBytes.Load(topic); ok {
		return n.(int32)
	}
	return kafkaMaxRecordBatchBytes
}

// waitForTopic waits until the metadata lists topic with a leader for
// every partition: creation is asynchronous on a real cluster.
func (k *Kafka) waitForTopic(ctx context.Context, topic string) error {
	for {
		md, err := k.admin.Metadata(ctx, topic)
		if err == nil {
			t, ok := md.Topics[topic]
			if ok && t.Err == nil && len(t.Partitions) > 0 && !slices.ContainsFunc(slices.Collect(maps.Values(t.Partitions)),
				func(p kadm.PartitionDetail) bool { return p.Leader < 0 || p.Err != nil }) {
				return nil
			}
			if ok && t.Err != nil {
				err = t.Err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kafka topic %s created but not ready after %s: %v", topic, kafkaTopicReadyTimeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// consumer returns topic's consumer, joining its group on first use.
func (k *Kafka) consumer(topic string) (*kafkaConsumer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil, ErrClosed
	}
	if c, ok := k.consumers[topic]; ok {
		return c, nil
	}
	c, err := newKafkaConsumer(k, topic)
	if err != nil {
		return nil, fmt.Errorf("kafka consumer of %s: %w", topic, err)
	}
	k.consumers[topic] = c
	return c, nil
}

// kafkaPublisher creates a topic before its first message; Close is a no-op (see Broker).
type kafkaPublisher struct{ k *Kafka }

// Publish produces msgs and returns once the cluster acknowledged every one
// (acks=all), or failed one. Records with the same key keep their order
// (idempotent producer). A record the cluster refuses as too large fails at
// once; a poison copy is cut to fit (truncateForPoison) and sent again.
func (p kafkaPublisher) Publish(topic string, msgs ...*message.Message) error {
	k := p.k
	if err := k.ensureTopic(topic); err != nil {
		return err
	}
	recs := make([]*kgo.Record, len(msgs))
	for i, msg := range msgs {
		rec, err := marshalRecord(topic, msg)
		if err != nil {
			return fmt.Errorf("message %s: %w", msg.UUID, err)
		}
		recs[i] = rec
	}
	var errs []error
	for i, res := range k.client.ProduceSync(k.ctx, recs...) {
		if res.Err == nil {
			continue
		}
		err := res.Err
		if cut := msgs[i].Copy(); truncateForPoison(cut, err) {
			// Cut a copy: the message may be the one being handled, which a
			// failed poison publish nacks and redelivers whole.
			err = p.Publish(topic, cut)
		}
		if err != nil {
			errs = append(errs, p.publishError(topic, msgs[i], err))
		}
	}
	return errors.Join(errs...)
}

func (p kafkaPublisher) publishError(topic string, msg *message.Message, err error) error {
	if errors.Is(err, context.Canceled) && p.k.isClosed() {
		return ErrClosed
	}
	if errors.Is(err, kgo.ErrRecordTimeout) {
		return fmt.Errorf("publish %s to kafka topic %s (retried for %s): %w", msg.UUID, topic, p.k.publishTimeout(), err)
	}
	return fmt.Errorf("publish %s to kafka topic %s: %w", msg.UUID, topic, err)
}

func (kafkaPublisher) Close() error { return nil }

// kafkaSubscriber subscribes to any topic through that topic's consumer
// group; Close is a no-op (see Broker): subscriptions end with their context.
type kafkaSubscriber struct{ k *Kafka }

// Subscribe adds one record in flight to topic's consumer (see
// kafkaConsumer.relay). When ctx ends the subscription hands out nothing
// more; a record it handed out is still acked and committed (the group
// session lives until the broker closes), so tasks finished during a
// graceful drain do not run again after a restart.
func (s kafkaSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if err := s.k.ensureTopic(topic); err != nil {
		return nil, err
	}
	c, err := s.k.consumer(topic)
	if err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	go c.relay(ctx, out)
	return out, nil
}

func (kafkaSubscriber) Close() error { return nil }

// publishTimeout is broker.kafka.publish_timeout (see kafkaPublishRetryTimeout).
func (k *Kafka) publishTimeout() time.Duration {
	return cmp.Or(k.cfg.PublishTimeout, kafkaPublishRetryTimeout)
}

// kgoLogger passes franz-go's errors and warnings to the Watermill logger;
// its info and debug lines are dropped before they are formatted.
type kgoLogger struct{ l watermill.LoggerAdapter }

func (kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (g kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	fields := make(watermill.LogFields, len(keyvals)/2)
	for i := 0; i+1 < len(keyvals); i += 2 {
		fields[fmt.Sprint(keyvals[i])] = keyvals[i+1]
	}
	if level == kgo.LogLevelError {
		g.l.Error("kafka client: "+msg, nil, fields)
		return
	}
	g.l.Info("kafka client: "+msg, fields)
}

// Unassigned returns the subscribed topics of which this process owns no
// partition right now: while its consumer group (re)joins, or when the
// group has more members than the topic has partitions (keep partitions >=
// processes). The pipeline's readiness uses it (progress.AssignmentReporter).
func (k *Kafka) Unassigned(context.Context) ([]string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil, ErrClosed
	}
	var out []string
	for topic, c := range k.consumers {
		if c.assigned() == 0 {
			out = append(out, topic)
		}
	}
	slices.Sort(out)
	return out, nil
}
