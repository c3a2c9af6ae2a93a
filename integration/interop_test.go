package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/task"
)

// Outside clients: records and messages written by tools that know nothing
// about Watermill must be processed, and our tasks must be readable by them.

// requireTool returns the path of an outside client, or skips saying how to
// install it (fails under CI=true).
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		skipOrFail(t, "%s not found: install it with `apt-get install -y %s`", name, pkg)
	}
	return path
}

func runTool(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "%s %v: %s", name, args, stderr.String())
	return stdout.String()
}

func kafkaTarget(t *testing.T) target {
	t.Helper()
	return target{name: "kafka", provider: kafkaProvider.require(t), open: openKafka}
}

func amqpTarget(t *testing.T) target {
	t.Helper()
	return target{name: "amqp", provider: amqpProvider.require(t), open: openAMQP}
}

func TestKafka_records_without_watermill_headers_become_tasks(t *testing.T) {
	t.Parallel()
	h := newHarness(t, kafkaTarget(t), nil, nil)

	// A plain Sarama producer: arbitrary keys, no headers at all.
	pc := sarama.NewConfig()
	pc.Producer.Return.Successes = true
	prod, err := sarama.NewSyncProducer(h.cfg.Broker.Kafka.Brokers, pc)
	require.NoError(t, err)
	defer prod.Close()
	var want []string
	for i, key := range []string{"customer-1", "", "x/y:z"} {
		id := fmt.Sprintf("sarama-%d", i)
		rec := &sarama.ProducerMessage{Topic: h.cfg.Topics.Events, Value: sarama.StringEncoder(ev(id, "order.created"))}
		if key != "" {
			rec.Key = sarama.StringEncoder(key)
		}
		_, _, err := prod.SendMessage(rec)
		require.NoError(t, err)
		want = append(want, task.ID(id, "audit"))
	}
	// A CloudEvent without messageId semantics of ours: the id comes from the envelope.
	_, _, err = prod.SendMessage(&sarama.ProducerMessage{Topic: h.cfg.Topics.Events, Value: sarama.StringEncoder(
		`{"specversion":"1.0","id":"ce-1","type":"order.created","source":"shop","data":{"orderId":"o-9"}}`)})
	require.NoError(t, err)
	want = append(want, task.ID("ce-1", "audit"))

	h.rec.waitDistinct(t, len(want), waitLong)
	assert.Empty(t, h.rec.missing(want))
}

func TestKafka_kcat_events_become_tasks_and_kcat_reads_tasks_as_design_json(t *testing.T) {
	t.Parallel()
	kcat := requireTool(t, "kcat", "kcat")
	h := newHarness(t, kafkaTarget(t), nil, nil)
	brokers := strings.Join(h.cfg.Broker.Kafka.Brokers, ",")

	var input strings.Builder
	var want []string
	for i := range 5 {
		id := fmt.Sprintf("kcat-%d", i)
		fmt.Fprintf(&input, "key-%d|%s\n", i%2, ev(id, "order.created"))
		want = append(want, task.ID(id, "audit"))
	}
	runTool(t, input.String(), kcat, "-P", "-b", brokers, "-t", h.cfg.Topics.Events, "-K", "|")
	h.rec.waitDistinct(t, len(want), waitLong)
	assert.Empty(t, h.rec.missing(want))

	// Read the tasks back with kcat: key, then the task JSON.
	out := runTool(t, "", kcat, "-C", "-b", brokers, "-t", h.cfg.Topics.Tasks, "-o", "beginning", "-e", "-q",
		"-c", fmt.Sprint(len(want)), "-f", "%k\t%s\n")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, len(want), out)
	var got []string
	for _, line := range lines {
		key, value, ok := strings.Cut(line, "\t")
		require.True(t, ok, line)
		var fields map[string]any
		require.NoError(t, json.Unmarshal([]byte(value), &fields), value)
		for _, f := range []string{"taskId", "taskName", "taskType", "priority", "parameters", "ruleId", "eventId", "eventType", "traceId", "createdAt"} {
			assert.Contains(t, fields, f, "task JSON field %s", f)
		}
		assert.Equal(t, fields["eventId"], key, "tasks are keyed by the rule's partition key, default the event id")
		got = append(got, fields["taskId"].(string))
	}
	assert.ElementsMatch(t, want, got)
}

func TestAMQP_amqp_publish_to_the_exchange_with_the_event_type_is_processed(t *testing.T) {
	t.Parallel()
	tool := requireTool(t, "amqp-publish", "amqp-tools")
	h := newHarness(t, amqpTarget(t), nil, nil)
	res := h.watch(h.cfg.Topics.Results)
	// librabbitmq reads the path "/" as the vhost "": leave it out for "/".
	toolURL := strings.TrimSuffix(h.cfg.Broker.AMQP.URL, "/")
	runTool(t, "", tool, "-u", toolURL, "-e", h.cfg.Broker.AMQP.Exchange, "-r", "order.created", "-p",
		"-b", ev("amqp-publish-1", "order.created"))

	got := results(t, res.waitFor(t, 1, waitLong))
	assert.Equal(t, task.ID("amqp-publish-1", "audit"), got[0].TaskID)
	assert.Equal(t, task.StatusSucceeded, got[0].Status)
}

func TestAMQP_messages_with_foreign_headers_are_processed(t *testing.T) {
	t.Parallel()
	h := newHarness(t, amqpTarget(t), nil, nil)
	res := h.watch(h.cfg.Topics.Results)
	conn, err := amqp091.Dial(h.cfg.Broker.AMQP.URL)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	// Numbers, tables and no Watermill UUID: the default marshaler would
	// requeue this forever.
	require.NoError(t, ch.PublishWithContext(t.Context(), h.cfg.Broker.AMQP.Exchange, "order.created", false, false, amqp091.Publishing{
		Headers:      amqp091.Table{"retries": int32(2), "origin": amqp091.Table{"region": "eu", "zone": int64(3)}},
		DeliveryMode: amqp091.Persistent,
		Body:         []byte(ev("foreign-1", "order.created")),
	}))

	got := results(t, res.waitFor(t, 1, waitLong))
	assert.Equal(t, task.ID("foreign-1", "audit"), got[0].TaskID)
}

// A foreign message RabbitMQ took, whose headers grow past what one AMQP
// header frame carries once turned into strings (a timestamp array becomes
// JSON), is poisoned with its headers cut: publishing its poison copy whole
// would make RabbitMQ close the publishing connection, again and again.
func TestAMQP_poison_copy_with_oversized_headers_is_cut_and_publishing_goes_on(t *testing.T) {
	t.Parallel()
	h := newHarness(t, amqpTarget(t), nil, nil)
	res := h.watch(h.cfg.Topics.Results)
	dlq := h.watch(h.cfg.Topics.Poison(h.cfg.Topics.Events))
	conn, err := amqp091.Dial(h.cfg.Broker.AMQP.URL)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	stamps := make([]any, 7000) // 63 KB on the wire, about 160 KB as JSON text
	for i := range stamps {
		stamps[i] = time.Date(2026, 12, 2, 7, 0, i%60, 0, time.UTC)
	}
	require.NoError(t, ch.PublishWithContext(t.Context(), h.cfg.Broker.AMQP.Exchange, "order.created", false, false, amqp091.Publishing{
		Headers:      amqp091.Table{"stamps": stamps, "origin": "legacy"},
		DeliveryMode: amqp091.Persistent,
		Body:         []byte("not json"),
	}))
	h.publish(ev("after-big-headers", "order.created"))

	poisoned := dlq.waitFor(t, 1, waitLong)
	md := poisoned[0].Metadata
	assert.Contains(t, md.Get(broker.MetaReasonPoisoned), "invalid JSON")
	assert.Equal(t, "stamps", md.Get(broker.MetaMetadataTruncated))
	assert.Equal(t, "legacy", md.Get("origin"))
	assert.Equal(t, "not json", string(poisoned[0].Payload))
	got := results(t, res.waitFor(t, 1, waitLong))
	assert.Equal(t, task.ID("after-big-headers", "audit"), got[0].TaskID)
}

func TestAMQP_binding_keys_select_event_types(t *testing.T) {
	t.Parallel()
	h := newHarness(t, amqpTarget(t), func(c *config.Config) { c.Broker.AMQP.BindingKeys = []string{"order.*"} }, nil)
	res := h.watch(h.cfg.Topics.Results)
	// "order.created.eu" has three words: "order.*" does not bind it, so
	// its publish fails (mandatory, returned) instead of vanishing.
	err := h.b.Publisher().Publish(h.cfg.Topics.Events, message.NewMessage("o-skip", []byte(ev("o-skip", "order.created.eu"))))
	require.ErrorIs(t, err, broker.ErrUnroutable)
	assert.True(t, permanent.Is(err), "retrying cannot route it: %v", err)
	h.publish(ev("o-take", "order.created"))

	got := results(t, res.waitFor(t, 1, waitLong))
	assert.Equal(t, task.ID("o-take", "audit"), got[0].TaskID)
	assert.Never(t, func() bool { return len(res.snapshot()) > 1 }, time.Second, 20*time.Millisecond)
}

func TestAMQP_tasks_queue_delivers_higher_priority_first(t *testing.T) {
	t.Parallel()
	tgt := amqpTarget(t)
	cfg := newConfig(t, tgt)
	b := tgt.open(t, cfg)
	var msgs []*message.Message
	for i, p := range []string{"LOW", "MEDIUM", "HIGH", "LOW", "HIGH"} {
		m := message.NewMessage(fmt.Sprintf("%d-%s", i, p), []byte(`{}`))
		m.Metadata.Set(task.MetaPriority, p)
		msgs = append(msgs, m)
	}
	// Published while nobody consumes: the queue orders them by priority.
	require.NoError(t, b.Publisher().Publish(cfg.Topics.Tasks, msgs...))

	got := watchTopic(t, b, cfg.Topics.Tasks).waitFor(t, len(msgs), waitLong)
	var order []string
	for _, m := range got {
		order = append(order, m.UUID)
	}
	assert.Equal(t, []string{"2-HIGH", "4-HIGH", "1-MEDIUM", "0-LOW", "3-LOW"}, order)
}

func TestAMQP_rejected_messages_dead_letter_to_the_poison_queue(t *testing.T) {
	t.Parallel()
	tgt := amqpTarget(t)
	cfg := newConfig(t, tgt)
	b := tgt.open(t, cfg)
	_, err := b.Subscriber(cfg.Topics.Events) // declares queue, bindings, DLX
	require.NoError(t, err)
	require.NoError(t, b.Publisher().Publish(cfg.Topics.Events, message.NewMessage("poison-me", []byte(ev("p-1", "order.created")))))

	// Another consumer rejects the message without requeue: RabbitMQ
	// dead-letters it through <exchange>.dlx into the poison queue.
	conn, err := amqp091.Dial(cfg.Broker.AMQP.URL)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	deliveries, err := ch.Consume(cfg.Topics.Events, "", false, false, false, false, nil)
	require.NoError(t, err)
	select {
	case d := <-deliveries:
		require.NoError(t, d.Reject(false))
	case <-time.After(waitLong):
		t.Fatal("no delivery")
	}

	got := watchTopic(t, b, cfg.Topics.Poison(cfg.Topics.Events)).waitFor(t, 1, waitLong)
	assert.Equal(t, "poison-me", got[0].UUID)
	assert.JSONEq(t, ev("p-1", "order.created"), string(got[0].Payload))
	assert.Contains(t, got[0].Metadata.Get("x-death"), `"reason":"rejected"`, "x-death arrives as a string")
	assert.Equal(t, cfg.Topics.Events, got[0].Metadata.Get("x-first-death-queue"))
}

// A replayed event goes back to the events queue only: not to the other
// queues bound to the events exchange (they had it the first time), and
// not lost when no binding matches its routing key.
func TestAMQP_dlq_replay_returns_an_event_to_the_events_queue_only(t *testing.T) {
	t.Parallel()
	tgt := amqpTarget(t)
	cfg := newConfig(t, tgt)
	cfg.Broker.AMQP.BindingKeys = []string{"order.*"}
	b := tgt.open(t, cfg)
	_, err := b.Subscriber(cfg.Topics.Events) // declares the queue and its bindings
	require.NoError(t, err)
	conn, err := amqp091.Dial(cfg.Broker.AMQP.URL)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	other, err := ch.QueueDeclare("", false, true, true, false, nil) // another application's queue
	require.NoError(t, err)
	require.NoError(t, ch.QueueBind(other.Name, "#", cfg.Broker.AMQP.Exchange, false, nil))

	dlq := cfg.Topics.Poison(cfg.Topics.Events)
	for _, typ := range []string{"order.created", "payment.completed"} { // the second matches no binding
		m := message.NewMessage("replay-"+typ, []byte(ev("r-"+typ, typ)))
		m.Metadata.Set(broker.MetaReasonPoisoned, "rule missing")
		m.Metadata.Set(broker.MetaTopicPoisoned, cfg.Topics.Events)
		m.Metadata.Set(broker.MetaEventType, typ)
		require.NoError(t, b.Publisher().Publish(dlq, m))
	}

	replayed, err := b.(*broker.AMQP).ReplayPoison(t.Context(), dlq, func(broker.PoisonMessage) (string, bool) {
		return cfg.Topics.Events, true
	})
	require.NoError(t, err)
	require.Len(t, replayed, 2)

	got := watchTopic(t, b, cfg.Topics.Events).waitFor(t, 2, waitLong)
	assert.ElementsMatch(t, []string{"replay-order.created", "replay-payment.completed"}, []string{got[0].UUID, got[1].UUID})
	q, err := ch.QueueDeclarePassive(other.Name, false, true, true, false, nil)
	require.NoError(t, err)
	assert.Zero(t, q.Messages, "the other application's queue got no replay")
}

func TestBrokers_report_backlog_of_messages_not_yet_consumed(t *testing.T) {
	t.Parallel()
	for _, tgt := range targets() {
		t.Run(tgt.name, func(t *testing.T) {
			t.Parallel()
			tgt.provider.require(t)
			cfg := newConfig(t, tgt)
			b := tgt.open(t, cfg)
			sub, err := b.Subscriber(cfg.Topics.Results)
			require.NoError(t, err)
			if tgt.name == "kafka" {
				// Kafka lag is per consumer group: join it, never ack.
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				_, err = sub.Subscribe(ctx, cfg.Topics.Results)
				require.NoError(t, err)
			}
			for i := range 3 {
				require.NoError(t, b.Publisher().Publish(cfg.Topics.Results, message.NewMessage(fmt.Sprint(i), nil)))
			}
			reporter, ok := b.(broker.BacklogReporter)
			require.True(t, ok)
			var n int64
			require.Eventually(t, func() bool {
				backlog, err := reporter.Backlog(t.Context())
				if err != nil {
					return false
				}
				n = 0
				for _, bl := range backlog {
					if bl.Topic == cfg.Topics.Results {
						n += bl.Messages
					}
				}
				return n == 3
			}, 10*time.Second, 100*time.Millisecond, "backlog of %s: %d", cfg.Topics.Results, n)
		})
	}
}
