package broker

import (
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/task"
)

// Tests against a live RabbitMQ are in integration/: they share one broker
// with a restart test that must not run beside other packages' tests.

func TestAMQPMarshaler_marshal_sets_priority_message_id_and_persistence(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		priority     string
		wantPriority uint8
	}{
		{name: "HIGH is 9", priority: "HIGH", wantPriority: 9},
		{name: "MEDIUM is 5", priority: "MEDIUM", wantPriority: 5},
		{name: "low in any case is 1", priority: "low", wantPriority: 1},
		{name: "no priority ranks below LOW", priority: "", wantPriority: 0},
		{name: "unknown priority ranks below LOW", priority: "URGENT", wantPriority: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			msg := message.NewMessage("task-1", []byte(`{}`))
			if tt.priority != "" {
				msg.Metadata.Set(task.MetaPriority, tt.priority)
			}
			p, err := newAMQPMarshaler().Marshal(msg)
			require.NoError(t, err)
			assert.Equal(t, tt.wantPriority, p.Priority)
			assert.Equal(t, "task-1", p.MessageId)
			assert.Equal(t, amqp091.Persistent, p.DeliveryMode)
			assert.Equal(t, "task-1", p.Headers[amqp.DefaultMessageUUIDHeaderKey])
		})
	}
}

func TestAMQPMarshaler_unmarshal_accepts_messages_from_any_producer(t *testing.T) {
	t.Parallel()
	died := time.Date(2025, 9, 6, 10, 30, 0, 0, time.UTC)
	body := []byte(`{"eventType":"order.created"}`)
	tests := []struct {
		name     string
		delivery amqp091.Delivery
		wantID   string
		wantMeta map[string]string
	}{
		{
			name:     "watermill message keeps uuid and metadata",
			delivery: amqp091.Delivery{Headers: amqp091.Table{amqp.DefaultMessageUUIDHeaderKey: "u-1", "correlation_id": "c"}},
			wantID:   "u-1",
			wantMeta: map[string]string{"correlation_id": "c"},
		},
		{
			name:     "no uuid header takes the message-id property",
			delivery: amqp091.Delivery{MessageId: "mid-7"},
			wantID:   "mid-7",
			wantMeta: map[string]string{},
		},
		{
			name:     "no uuid and no message-id derive a stable id from the body",
			delivery: amqp091.Delivery{},
			wantID:   "28967cc0-ad3a-5071-b980-de573d042170",
			wantMeta: map[string]string{},
		},
		{
			name: "non-string headers become strings",
			delivery: amqp091.Delivery{Headers: amqp091.Table{
				amqp.DefaultMessageUUIDHeaderKey: "u-2",
				"x-count":                        int64(3),
				"x-ratio":                        1.5,
				"x-flag":                         true,
				"x-raw":                          []byte("raw"),
				"x-none":                         nil,
				"x-death": []any{amqp091.Table{
					"count": int64(1), "queue": "schedule-tasks", "reason": "rejected", "time": died,
				}},
			}},
			wantID: "u-2",
			wantMeta: map[string]string{
				"x-count": "3", "x-ratio": "1.5", "x-flag": "true", "x-raw": "raw", "x-none": "",
				"x-death": `[{"count":1,"queue":"schedule-tasks","reason":"rejected","time":"2025-09-06T10:30:00Z"}]`,
			},
		},
		{
			name:     "a numeric uuid header is read as a string",
			delivery: amqp091.Delivery{Headers: amqp091.Table{amqp.DefaultMessageUUIDHeaderKey: int32(42)}},
			wantID:   "42",
			wantMeta: map[string]string{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.delivery.Body = body
			msg, err := newAMQPMarshaler().Unmarshal(tt.delivery)
			require.NoError(t, err)
			assert.Equal(t, tt.wantID, msg.UUID)
			assert.Equal(t, message.Metadata(tt.wantMeta), msg.Metadata)
			assert.Equal(t, body, []byte(msg.Payload))
		})
	}
}

func TestEventRoutingKey_is_the_event_type(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		meta    string
		payload string
		want    string
	}{
		{name: "metadata wins", meta: "order.paid", payload: `{"eventType":"order.created"}`, want: "order.paid"},
		{name: "seed envelope", payload: `{"eventType":"order.created","payload":{"a":1}}`, want: "order.created"},
		{name: "cloudevents", payload: `{"specversion":"1.0","type":"payment.completed","id":"1"}`, want: "payment.completed"},
		{name: "type without specversion is not an event type", payload: `{"type":"x"}`, want: ""},
		{name: "not JSON", payload: `{"eventType":`, want: ""},
		{name: "no type", payload: `{}`, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			msg := message.NewMessage("e", []byte(tt.payload))
			if tt.meta != "" {
				msg.Metadata.Set(MetaEventType, tt.meta)
			}
			assert.Equal(t, tt.want, eventRoutingKey(msg))
		})
	}
}

func TestAMQPTopology_queue_arguments(t *testing.T) {
	t.Parallel()
	cfg := config.Default().Broker.AMQP
	cfg.ResultsMaxAge = 2 * time.Hour
	topo := &amqpTopology{exchange: "ex", dlx: "ex.dlx", events: "business-events", tasks: "schedule-tasks",
		results: "task-results", poisonSuffix: ".dlq", cfg: cfg}
	sac := cfg
	sac.SingleActiveConsumer = true
	sac.PoisonMaxLength, sac.PoisonMaxAge = -1, time.Minute
	topoSAC := *topo
	topoSAC.cfg = sac
	tests := []struct {
		name  string
		topo  *amqpTopology
		topic string
		want  amqp091.Table
	}{
		{name: "events dead-letter to their poison queue", topo: topo, topic: "business-events", want: amqp091.Table{
			"x-dead-letter-exchange": "ex.dlx", "x-dead-letter-routing-key": "business-events.dlq"}},
		{name: "tasks are a priority queue", topo: topo, topic: "schedule-tasks", want: amqp091.Table{
			"x-dead-letter-exchange": "ex.dlx", "x-dead-letter-routing-key": "schedule-tasks.dlq", "x-max-priority": int32(10)}},
		{name: "tasks with a single active consumer", topo: &topoSAC, topic: "schedule-tasks", want: amqp091.Table{
			"x-dead-letter-exchange": "ex.dlx", "x-dead-letter-routing-key": "schedule-tasks.dlq", "x-max-priority": int32(10),
			"x-single-active-consumer": true}},
		{name: "poison queues are bounded and their drops counted", topo: topo, topic: "schedule-tasks.dlq", want: amqp091.Table{
			"x-dead-letter-exchange": "ex.dlx", "x-dead-letter-routing-key": "eventpipe.dropped", "x-max-length": int64(1_000_000)}},
		{name: "poison queues bounded by age only", topo: &topoSAC, topic: "schedule-tasks.dlq", want: amqp091.Table{
			"x-dead-letter-exchange": "ex.dlx", "x-dead-letter-routing-key": "eventpipe.dropped", "x-message-ttl": int64(60_000)}},
		{name: "results are bounded by length and age", topo: topo, topic: "task-results", want: amqp091.Table{
			"x-dead-letter-exchange": "ex.dlx", "x-dead-letter-routing-key": "eventpipe.dropped",
			"x-max-length": int64(100_000), "x-message-ttl": int64(7_200_000)}},
		{name: "other topics dead-letter to their poison queue", topo: topo, topic: "audit", want: amqp091.Table{
			"x-dead-letter-exchange": "ex.dlx", "x-dead-letter-routing-key": "audit.dlq"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, tt.topo.queueArgs(tt.topic))
		})
	}
}

func TestNewAMQP_rejects_bad_config_naming_the_field(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		mutate  func(*config.AMQP)
		wantErr string
	}{
		{name: "wrong scheme, password redacted", mutate: func(a *config.AMQP) { a.URL = "http://u:secret@h/" }, wantErr: `broker.amqp.url must start with amqp:// or amqps://, got "http://u:xxxxx@h/"`},
		{name: "not a URL", mutate: func(a *config.AMQP) { a.URL = "amqp://h:port/" }, wantErr: "broker.amqp.url is not a valid URL"},
		{name: "no exchange", mutate: func(a *config.AMQP) { a.Exchange = "" }, wantErr: "broker.amqp.exchange must not be empty"},
		{name: "no binding keys", mutate: func(a *config.AMQP) { a.BindingKeys = nil }, wantErr: "broker.amqp.binding_keys must list at least one key"},
		{name: "zero prefetch", mutate: func(a *config.AMQP) { a.Prefetch = 0 }, wantErr: "broker.amqp.prefetch must be 1 to 65535, got 0"},
		{name: "prefetch over AMQP's limit", mutate: func(a *config.AMQP) { a.Prefetch = 70000 }, wantErr: "broker.amqp.prefetch must be 1 to 65535, got 70000"},
		{name: "zero pool", mutate: func(a *config.AMQP) { a.ChannelPoolSize = 0 }, wantErr: "broker.amqp.channel_pool_size must be >= 1, got 0"},
		{name: "missing CA file", mutate: func(a *config.AMQP) { a.TLS = config.TLS{Enabled: true, CAFile: "/nonexistent/ca.pem"} }, wantErr: "broker.amqp.tls.ca_file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := config.Default().Broker.AMQP
			tt.mutate(&cfg)
			a, err := NewAMQP(cfg, config.Default().Topics, nil)
			require.Error(t, err)
			assert.Nil(t, a)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

func TestNewAMQP_fails_when_rabbitmq_is_unreachable_without_leaking_the_password(t *testing.T) {
	t.Parallel()
	cfg := config.Default().Broker.AMQP
	cfg.URL = "amqp://guest:secret@" + closedAddr(t) + "/"
	_, err := NewAMQP(cfg, config.Default().Topics, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "connect to RabbitMQ at amqp://guest:xxxxx@")
	assert.NotContains(t, err.Error(), "secret")
}

func TestAMQPPublisher_rejects_names_longer_than_AMQP_allows_without_retrying(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 256)
	// No connection is needed: the names are refused before any I/O.
	a := &AMQP{topics: config.Topics{Events: "business-events"}, declared: map[string]bool{}}
	tests := []struct {
		name    string
		topic   string
		msg     *message.Message
		wantErr string
	}{
		{name: "event type too long for a routing key", topic: "business-events",
			msg: message.NewMessage("e1", []byte(`{"eventType":"`+long+`"}`)), wantErr: "event type of 256 bytes cannot be an AMQP routing key"},
		{name: "topic too long for a queue name", topic: long,
			msg: message.NewMessage("m1", nil), wantErr: "is not a queue name (1 to 255 bytes)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := a.Publisher().Publish(tt.topic, tt.msg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

func TestCheckHeaderSize_refuses_oversized_metadata_and_cuts_poison_copies(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", 200<<10)

	ok := message.NewMessage("ok", nil)
	ok.Metadata.Set("correlation_id", "c-1")
	require.NoError(t, checkHeaderSize(ok))

	task := message.NewMessage("t-1", nil)
	task.Metadata.Set("correlation_id", big)
	err := checkHeaderSize(task)
	require.Error(t, err)
	assert.True(t, permanent.Is(err), "retrying cannot help: %v", err)
	assert.Contains(t, err.Error(), `message t-1: metadata of 204820 bytes is over the 98304 an AMQP header frame may carry here (largest: "correlation_id", 204800 bytes)`)

	poison := message.NewMessage("p-1", []byte("not json"))
	poison.Metadata.Set("x-foreign", big)
	poison.Metadata.Set(MetaReasonPoisoned, "invalid JSON")
	poison.Metadata.Set(MetaTopicPoisoned, "business-events")
	require.NoError(t, checkHeaderSize(poison), "a poison copy is cut, not refused")
	assert.Equal(t, "invalid JSON", poison.Metadata.Get(MetaReasonPoisoned))
	assert.Less(t, len(poison.Metadata.Get("x-foreign")), 5<<10)
	assert.Equal(t, "x-foreign", poison.Metadata.Get(MetaMetadataTruncated))
}
