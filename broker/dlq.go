package broker

import (
	"context"
	"maps"

	"github.com/ThreeDotsLabs/watermill/message"
	wmw "github.com/ThreeDotsLabs/watermill/message/router/middleware"
)

// Poison metadata: what the poison middleware adds to a message it
// poisons (Watermill's keys plus eventpipe's reason_kind, which is
// middleware.ReasonKindKey: broker does not import middleware).
const (
	MetaReasonPoisoned  = wmw.ReasonForPoisonedKey
	MetaTopicPoisoned   = wmw.PoisonedTopicKey
	MetaHandlerPoisoned = wmw.PoisonedHandlerKey
	MetaReasonKind      = "reason_kind"
)

// PoisonMetadataKeys are the metadata keys a replayed message leaves behind:
// once replayed it is an ordinary message again, and if it fails again it
// is poisoned with fresh ones.
var PoisonMetadataKeys = []string{MetaReasonPoisoned, MetaTopicPoisoned, MetaHandlerPoisoned, MetaReasonKind}

// PoisonMessage is one message waiting on a poison (dead-letter) topic.
type PoisonMessage struct {
	// Topic is the poison topic the message waits on.
	Topic string
	// Position is where it waits: "partition/offset" on Kafka, its place
	// in the queue counting from 1 at the head on AMQP.
	Position string
	// Message is the message as it was poisoned: the original UUID, payload
	// and metadata plus the poison metadata.
	Message *message.Message
}

// Reason returns why the message was poisoned (the handler's error).
func (m PoisonMessage) Reason() string { return m.Message.Metadata.Get(MetaReasonPoisoned) }

// ReasonKind returns permanent, retries_exhausted or panic ("" when a
// broker dead-lettered the message rather than eventpipe).
func (m PoisonMessage) ReasonKind() string { return m.Message.Metadata.Get(MetaReasonKind) }

// Origin returns the topic the message was poisoned from ("" when a
// broker dead-lettered the message rather than eventpipe).
func (m PoisonMessage) Origin() string { return m.Message.Metadata.Get(MetaTopicPoisoned) }

// Handler returns the handler that poisoned the message.
func (m PoisonMessage) Handler() string { return m.Message.Metadata.Get(MetaHandlerPoisoned) }

// DeadLetters is a Broker whose poison topics can be listed and replayed.
// The Kafka and AMQP brokers implement it. The embedded broker cannot: its
// poison messages live only in the memory of the process that poisoned them.
//
// Replays are at-least-once: a message published back to its origin but not
// yet removed from the poison topic when the process dies is replayed again
// next time (task ids are de-duplicated, event redeliveries make the same
// task ids). Run one replay of a poison topic at a time.
type DeadLetters interface {
	// ListPoison returns up to limit (0 = no limit) messages waiting on the
	// poison topic, oldest first, without taking them off it, and how many
	// wait in all. A poison topic that does not exist yet has none.
	ListPoison(ctx context.Context, topic string, limit int) (msgs []PoisonMessage, waiting int, err error)
	// ReplayPoison offers each message waiting on the poison topic to route,
	// oldest first. When route returns ok, the message goes back to the
	// topic route returns (ReplayMessage: same UUID, payload and metadata,
	// without the poison metadata) and, once the broker confirmed it, leaves
	// the poison topic; the others stay. It returns the messages replayed,
	// also with an error, which stops the replay.
	ReplayPoison(ctx context.Context, topic string, route func(PoisonMessage) (to string, ok bool)) ([]PoisonMessage, error)
}

// ReplayMessage returns the message a replay of pm publishes: its UUID,
// payload and metadata without PoisonMetadataKeys.
func ReplayMessage(pm PoisonMessage) *message.Message {
	out := message.NewMessage(pm.Message.UUID, pm.Message.Payload)
	out.Metadata = maps.Clone(pm.Message.Metadata)
	if out.Metadata == nil {
		out.Metadata = message.Metadata{}
	}
	for _, k := range PoisonMetadataKeys {
		delete(out.Metadata, k)
	}
	return out
}
