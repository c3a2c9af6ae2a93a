package broker

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/eventpipe/eventpipe/task"
)

// AMQP message priorities of task priorities (the tasks queue has
// x-max-priority amqpMaxPriority). Messages without a priority rank below LOW.
const (
	amqpMaxPriority      = 10
	amqpPriorityHigh     = 9
	amqpPriorityMedium   = 5
	amqpPriorityLow      = 1
	amqpPriorityUnranked = 0
)

// amqpIDNamespace makes the ids of foreign messages UUIDv5 values of their own space.
var amqpIDNamespace = uuid.MustParse("2b7c9a8e-4f1d-5c3b-8e6a-0d9f1e2c3b4a")

// amqpMarshaler is watermill-amqp's DefaultMarshaler (UUID header, metadata
// as headers, persistent delivery) plus what eventpipe needs:
//   - Marshal sets the AMQP priority from metadata priority (tasks) and the
//     message-id property, for consumers that are not Watermill;
//   - Unmarshal accepts messages from any producer: header values that are
//     not strings (x-death from dead-lettering, numbers from other clients)
//     become strings through PreprocessDelivery, where the default
//     marshaler would fail and the message would be requeued forever
//     (watermill#65); a message with no Watermill UUID takes its
//     message-id property, else a UUIDv5 of its body, so redeliveries keep
//     one id.
//
// Unmarshal never fails.
type amqpMarshaler struct {
	inner amqp.DefaultMarshaler
}

func newAMQPMarshaler() amqpMarshaler {
	return amqpMarshaler{inner: amqp.DefaultMarshaler{
		PreprocessDelivery:    stringHeaders,
		PostprocessPublishing: setPriority,
	}}
}

var _ amqp.Marshaler = amqpMarshaler{}

func (m amqpMarshaler) Marshal(msg *message.Message) (amqp091.Publishing, error) {
	p, err := m.inner.Marshal(msg)
	if err != nil {
		return p, err
	}
	p.MessageId = msg.UUID
	return p, nil
}

func (m amqpMarshaler) Unmarshal(d amqp091.Delivery) (*message.Message, error) {
	// The default marshaler reads the UUID header before PreprocessDelivery
	// runs, so a non-string UUID header must be fixed here.
	if v, ok := d.Headers[amqp.DefaultMessageUUIDHeaderKey]; ok {
		if _, isString := v.(string); !isString {
			d = stringHeaders(d)
		}
	}
	msg, err := m.inner.Unmarshal(d)
	if err != nil {
		// Unreachable after stringHeaders; keep the message rather than loop on it.
		msg = message.NewMessage("", d.Body)
	}
	if msg.UUID == "" {
		if d.MessageId != "" {
			msg.UUID = d.MessageId
		} else {
			msg.UUID = uuid.NewSHA1(amqpIDNamespace, d.Body).String()
		}
	}
	return msg, nil
}

// stringHeaders returns d with every header value as a string. Tables and
// arrays (x-death) become JSON. The map is copied: d is the caller's.
func stringHeaders(d amqp091.Delivery) amqp091.Delivery {
	if len(d.Headers) == 0 {
		return d
	}
	h := make(amqp091.Table, len(d.Headers))
	for k, v := range d.Headers {
		h[k] = headerString(v)
	}
	d.Headers = h
	return d
}

func headerString(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case []byte:
		return string(v)
	case bool:
		return strconv.FormatBool(v)
	case int8, int16, int32, int64, int, uint8, uint16, uint32, uint64, uint:
		return fmt.Sprint(v)
	case float32:
		return strconv.FormatFloat(float64(v), 'g', -1, 32)
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	case time.Time:
		return v.UTC().Format(time.RFC3339Nano)
	case amqp091.Decimal:
		return fmt.Sprintf("%de-%d", v.Value, v.Scale)
	default: // amqp091.Table, []any
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Sprint(v)
		}
		return string(b)
	}
}

// setPriority maps the priority header (task priority) onto the AMQP priority.
func setPriority(p amqp091.Publishing) amqp091.Publishing {
	s, _ := p.Headers[task.MetaPriority].(string)
	p.Priority = amqpPriority(s)
	return p
}

// amqpPriority returns the AMQP priority of a task priority, any case.
func amqpPriority(s string) uint8 {
	switch strings.ToUpper(s) {
	case "HIGH":
		return amqpPriorityHigh
	case "MEDIUM":
		return amqpPriorityMedium
	case "LOW":
		return amqpPriorityLow
	default:
		return amqpPriorityUnranked
	}
}

// eventRoutingKey is the routing key of an event on the events exchange: its
// type, from metadata event_type (set by whoever parsed the event already),
// else read from the payload (seed envelope eventType, CloudEvents type).
// An unreadable event gets "" and is routed only by a "#" binding, to be
// poisoned by the trigger.
func eventRoutingKey(msg *message.Message) string {
	if t := msg.Metadata.Get(MetaEventType); t != "" {
		return t
	}
	var probe struct {
		EventType   string `json:"eventType"`
		Type        string `json:"type"`
		SpecVersion string `json:"specversion"`
	}
	if json.Unmarshal(msg.Payload, &probe) != nil {
		return ""
	}
	if probe.EventType == "" && probe.SpecVersion != "" {
		return probe.Type
	}
	return probe.EventType
}
