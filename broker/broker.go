// Package broker builds the pub/sub eventpipe runs on, from config.Broker.
// Only the embedded broker exists today; Kafka and AMQP will plug into New,
// and a backlog reporter (consumer lag / queue depth for queue_backlog) will
// be an optional interface their brokers implement.
package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventpipe/eventpipe/config"
)

// ErrClosed is returned by Ping and Subscriber after Close.
var ErrClosed = errors.New("broker closed")

// Broker is one connection to a message broker, shared by every publisher
// and subscriber of the process. The Broker owns their lifetime: Close on
// what Publisher and Subscriber return is a no-op (a Watermill Router closes
// its handlers' publishers and subscribers, which must not take the shared
// connection down); Broker.Close closes everything.
type Broker interface {
	// Publisher returns the publisher for every topic. It is safe for concurrent use.
	Publisher() message.Publisher
	// Subscriber returns a subscriber for topic. Brokers that need per-topic
	// topology (AMQP queues and bindings) declare it here; call it once per
	// handler, not per message. The subscriptions of one subscriber compete
	// for the topic's messages. Across subscribers: on Kafka they all join the
	// topic's one consumer group and on AMQP they share the topic's queue, so
	// they compete too; on the embedded broker each subscriber is a group of
	// its own and gets every message.
	Subscriber(topic string) (message.Subscriber, error)
	// Ping reports whether the broker is reachable, for readiness checks.
	Ping(ctx context.Context) error
	// Close releases the broker. Publishing after Close fails.
	Close() error
}

// BacklogReporter is a Broker that can tell how many messages wait to be
// consumed: Kafka consumer lag, RabbitMQ queue depth, the embedded broker's
// unacked count. The pipeline exports it as queue_backlog.
type BacklogReporter interface {
	Backlog(ctx context.Context) ([]Backlog, error)
}

// Backlog is the number of messages waiting on one topic partition (or queue).
type Backlog struct {
	Topic     string
	Partition string
	Messages  int64
}

// New returns the broker cfg.Kind names, with the topology of topics
// (AMQP queues and exchanges, Kafka topics with their partition counts). An
// unknown kind is an error listing the known ones; logger may be nil.
func New(cfg config.Broker, topics config.Topics, logger watermill.LoggerAdapter) (Broker, error) {
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	switch cfg.Kind {
	case config.BrokerEmbedded:
		return NewEmbedded(cfg.Embedded, logger), nil
	case config.BrokerKafka:
		return NewKafka(cfg.Kafka, topics, logger)
	case config.BrokerAMQP:
		return NewAMQP(cfg.AMQP, topics, logger)
	default:
		return nil, fmt.Errorf("unknown broker kind %q (known: %s)", cfg.Kind, strings.Join(config.BrokerKinds, ", "))
	}
}
