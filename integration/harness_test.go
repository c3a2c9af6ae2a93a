package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/pipeline"
	"github.com/eventpipe/eventpipe/task"
)

// testRules: "audit" makes one task per order event, "seq" keys its tasks
// by payload.key (order per key on Kafka), "flaky" and "broken" run the
// executors a test installs.
const testRules = `taskTriggerRules:
  - ruleId: "audit"
    eventType: "order.#"
    taskName: "audit-${eventId}"
    taskType: "record"
    priority: "HIGH"
    parameters: {orderId: "${payload.orderId:-none}"}
  - ruleId: "seq"
    eventType: "seq.step"
    taskName: "step-${payload.seq}"
    taskType: "record"
    partitionKey: "${payload.key}"
    parameters: {key: "${payload.key}", seq: "${payload.seq}"}
  - ruleId: "flaky"
    eventType: "flaky.test"
    taskName: "flaky"
    taskType: "flaky"
  - ruleId: "broken"
    eventType: "broken.test"
    taskName: "broken"
    taskType: "broken"
`

// target is a broker kind the scenario suite runs against.
type target struct {
	name     string
	provider *provider
	// open connects a broker for cfg's topics (set by newConfig) and
	// removes what it created when t ends.
	open func(t testing.TB, cfg *config.Config) broker.Broker
}

func targets() []target {
	return []target{
		{name: "kafka", provider: kafkaProvider, open: openKafka},
		{name: "amqp", provider: amqpProvider, open: openAMQP},
	}
}

// testID is a unique, topic-safe name part.
func testID() string { return strings.ToLower(watermill.NewShortUUID()) }

// newConfig returns the defaults with topics, exchange and consumer group
// unique to one test, the broker of tgt, fast retries and the test rules.
func newConfig(t testing.TB, tgt target) *config.Config {
	t.Helper()
	id := testID()
	cfg := config.Default()
	cfg.Topics.Events = "it-" + id + "-business-events"
	cfg.Topics.Tasks = "it-" + id + "-schedule-tasks"
	cfg.Topics.Results = "it-" + id + "-task-results"
	cfg.Broker.Kind = tgt.name
	cfg.Broker.Kafka.Brokers = tgt.provider.kafkaBrokers
	cfg.Broker.Kafka.ConsumerGroup = "it-" + id
	cfg.Broker.Kafka.Partitions = map[string]int{cfg.Topics.Events: 12, cfg.Topics.Tasks: 6}
	cfg.Broker.AMQP.URL = tgt.provider.amqpURL
	cfg.Broker.AMQP.Exchange = "it-" + id + ".business.event.exchange"
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Retry.InitialInterval = time.Millisecond
	cfg.Retry.MaxInterval = 5 * time.Millisecond
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.Metrics.Enabled = false
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	require.NoError(t, os.WriteFile(rules, []byte(testRules), 0o600))
	cfg.Rules.File = rules
	return cfg
}

// testLogger discards logs unless EVENTPIPE_TEST_LOG is set: background
// goroutines may log after a test ends, where t.Log would panic.
func testLogger() *slog.Logger {
	if os.Getenv("EVENTPIPE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func wmLogger() watermill.LoggerAdapter { return watermill.NewSlogLogger(testLogger()) }

func pipelineTopics(cfg *config.Config) []string {
	tp := cfg.Topics
	return []string{tp.Events, tp.Tasks, tp.Results, tp.Poison(tp.Events), tp.Poison(tp.Tasks), tp.Poison(tp.Results)}
}

func openKafka(t testing.TB, cfg *config.Config) broker.Broker {
	t.Helper()
	k, err := broker.NewKafka(cfg.Broker.Kafka, cfg.Topics, wmLogger())
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = k.Close()
		if kafkaProvider.external {
			deleteKafkaTopics(cfg.Broker.Kafka.Brokers, pipelineTopics(cfg))
		}
	})
	return k
}

func deleteKafkaTopics(brokers []string, topics []string) {
	admin, err := sarama.NewClusterAdmin(brokers, sarama.NewConfig())
	if err != nil {
		return
	}
	defer admin.Close()
	for _, topic := range topics {
		_ = admin.DeleteTopic(topic)
	}
}

func openAMQP(t testing.TB, cfg *config.Config) broker.Broker {
	t.Helper()
	a, err := broker.NewAMQP(cfg.Broker.AMQP, cfg.Topics, wmLogger())
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = a.Close()
		deleteAMQP(cfg.Broker.AMQP.URL, pipelineTopics(cfg), cfg.Broker.AMQP.Exchange)
	})
	return a
}

// deleteAMQP deletes queues (and their poison queues) and an events
// exchange with its dead-letter exchange, best effort.
func deleteAMQP(amqpURL string, queues []string, exchange string) {
	conn, err := amqp091.Dial(amqpURL)
	if err != nil {
		return
	}
	defer conn.Close()
	for _, q := range queues {
		for _, name := range []string{q, q + ".dlq"} {
			// A failed delete closes the channel: one channel per call.
			if ch, err := conn.Channel(); err == nil {
				_, _ = ch.QueueDelete(name, false, false, false)
				_ = ch.Close()
			}
		}
	}
	if exchange == "" {
		return
	}
	for _, ex := range []string{exchange, exchange + ".dlx"} {
		if ch, err := conn.Channel(); err == nil {
			_ = ch.ExchangeDelete(ex, false, false)
			_ = ch.Close()
		}
	}
}

// harness runs a pipeline on a broker it shares with the test, so the test
// can publish events and watch results and poison topics.
type harness struct {
	t      testing.TB
	cfg    *config.Config
	b      broker.Broker
	p      *pipeline.Pipeline
	rec    *recorder
	cancel context.CancelFunc
	done   chan error
}

// newHarness starts a pipeline for tgt; mutate edits the config first. The
// executor "record" records every task it runs; execs adds "flaky" and
// "broken" (default: succeed at once).
func newHarness(t testing.TB, tgt target, mutate func(*config.Config), execs map[string]executor.Executor) *harness {
	t.Helper()
	cfg := newConfig(t, tgt)
	if mutate != nil {
		mutate(cfg)
	}
	b := tgt.open(t, cfg)
	return startPipeline(t, cfg, b, execs)
}

func startPipeline(t testing.TB, cfg *config.Config, b broker.Broker, execs map[string]executor.Executor) *harness {
	t.Helper()
	rec := newRecorder()
	opts := []pipeline.Option{pipeline.WithBroker(b), pipeline.WithLogger(testLogger()), pipeline.WithExecutor("record", rec)}
	for _, name := range []string{"flaky", "broken"} {
		e, ok := execs[name]
		if !ok {
			e = executor.Func(func(context.Context, *task.Task) ([]byte, error) { return nil, nil })
		}
		opts = append(opts, pipeline.WithExecutor(name, e))
	}
	p, err := pipeline.New(cfg, opts...)
	require.NoError(t, err)
	h := &harness{t: t, cfg: cfg, b: b, p: p, rec: rec, done: make(chan error, 1)}
	var ctx context.Context
	ctx, h.cancel = context.WithCancel(context.Background())
	go func() { h.done <- p.Run(ctx) }()
	select {
	case <-p.Running():
	case err := <-h.done:
		t.Fatalf("pipeline stopped at start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("pipeline not running after 30s")
	}
	t.Cleanup(h.stop)
	return h
}

// stop shuts the pipeline down once.
func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Logf("pipeline stopped with: %v", err)
		}
	case <-time.After(30 * time.Second):
		h.t.Error("pipeline did not stop within 30s")
	}
}

// publish sends events to the events topic through the broker, each with
// its messageId as UUID (the API ingest path does the same).
func (h *harness) publish(events ...string) {
	h.t.Helper()
	publishEvents(h.t, h.b.Publisher(), h.cfg.Topics.Events, events, nil)
}

// publishEvents publishes events in parallel; key, when set, gives each
// event's partition_key (its Kafka record key) and publishes in order.
func publishEvents(t testing.TB, pub message.Publisher, topic string, events []string, key func(i int) string) {
	t.Helper()
	require.NoError(t, publishAll(pub, topic, events, key))
}

// publishAll is publishEvents for goroutines other than the test's.
func publishAll(pub message.Publisher, topic string, events []string, key func(i int) string) error {
	msgs := make([]*message.Message, len(events))
	for i, e := range events {
		var probe struct {
			MessageID string `json:"messageId"`
		}
		_ = json.Unmarshal([]byte(e), &probe)
		msgs[i] = message.NewMessage(probe.MessageID, []byte(e))
		if key != nil {
			msgs[i].Metadata.Set(task.MetaPartitionKey, key(i))
		}
	}
	if key != nil {
		// Order per key matters: one sequential publish.
		return pub.Publish(topic, msgs...)
	}
	const workers = 8
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(msgs); i += workers {
				if err := pub.Publish(topic, msgs[i]); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// watch collects every message of topic, acking each.
func (h *harness) watch(topic string) *collector {
	h.t.Helper()
	return watchTopic(h.t, h.b, topic)
}

func watchTopic(t testing.TB, b broker.Broker, topic string) *collector {
	t.Helper()
	sub, err := b.Subscriber(topic)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, err := sub.Subscribe(ctx, topic)
	require.NoError(t, err)
	c := &collector{}
	go func() {
		for m := range ch {
			c.add(m)
			m.Ack()
		}
	}()
	return c
}

type collector struct {
	mu   sync.Mutex
	msgs []*message.Message
}

func (c *collector) add(m *message.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, m)
}

func (c *collector) snapshot() []*message.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*message.Message(nil), c.msgs...)
}

// waitFor waits until n messages arrived and returns them.
func (c *collector) waitFor(t testing.TB, n int, timeout time.Duration) []*message.Message {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for len(c.snapshot()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("want %d messages within %s, got %d", n, timeout, len(c.snapshot()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return c.snapshot()
}

func results(t testing.TB, msgs []*message.Message) []task.Result {
	t.Helper()
	out := make([]task.Result, len(msgs))
	for i, m := range msgs {
		require.NoError(t, json.Unmarshal(m.Payload, &out[i]))
	}
	return out
}

// recorder is an executor that records every task it runs, in order.
type recorder struct {
	mu    sync.Mutex
	runs  map[string]int      // task id -> executions
	byKey map[string][]string // partition key -> seq values in execution order
	total int
	ch    chan struct{} // signalled on every run
}

func newRecorder() *recorder {
	return &recorder{runs: map[string]int{}, byKey: map[string][]string{}, ch: make(chan struct{}, 1)}
}

func (r *recorder) Execute(_ context.Context, t *task.Task) ([]byte, error) {
	r.mu.Lock()
	r.runs[t.TaskID]++
	r.total++
	if key, ok := t.Parameters["key"].(string); ok {
		r.byKey[key] = append(r.byKey[key], fmt.Sprint(t.Parameters["seq"]))
	}
	r.mu.Unlock()
	select {
	case r.ch <- struct{}{}:
	default:
	}
	return []byte("ok"), nil
}

// executed returns how many distinct task ids ran and how many runs there were.
func (r *recorder) executed() (distinct, runs int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.runs), r.total
}

// missing returns the ids of want that never ran.
func (r *recorder) missing(want []string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, id := range want {
		if r.runs[id] == 0 {
			out = append(out, id)
		}
	}
	return out
}

// waitDistinct waits until n distinct tasks ran.
func (r *recorder) waitDistinct(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if d, _ := r.executed(); d >= n {
			return
		}
		select {
		case <-r.ch:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			d, runs := r.executed()
			t.Fatalf("want %d distinct tasks executed within %s, got %d (%d runs)", n, timeout, d, runs)
		}
	}
}

func ev(id, typ string) string {
	return fmt.Sprintf(`{"messageId":%q,"eventType":%q,"payload":{"orderId":"o-%s"},"metadata":{"traceId":"trace-%s"}}`, id, typ, id, id)
}

func seqEvent(id, key string, seq int) string {
	return fmt.Sprintf(`{"messageId":%q,"eventType":"seq.step","payload":{"key":%q,"seq":%d}}`, id, key, seq)
}

// orderEvents returns n order.created events with ids prefix-0..n-1 and
// the audit task id each one must produce.
func orderEvents(prefix string, n int) (events, taskIDs []string) {
	events, taskIDs = make([]string, n), make([]string, n)
	for i := range n {
		id := fmt.Sprintf("%s-%d", prefix, i)
		events[i] = ev(id, "order.created")
		taskIDs[i] = task.ID(id, "audit")
	}
	return events, taskIDs
}
