package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

var _ DeadLetters = (*AMQP)(nil)

// ListPoison implements DeadLetters. It takes up to limit messages off the
// poison queue with basic.get without acknowledging them and closes its
// channel, which puts every one of them back where it was: the queue is
// unchanged (RabbitMQ marks them redelivered). While it runs, the messages
// it holds are invisible to other consumers of the queue.
func (a *AMQP) ListPoison(ctx context.Context, topic string, limit int) ([]PoisonMessage, int, error) {
	var out []PoisonMessage
	waiting, err := a.dlqGet(ctx, topic, func(d amqp091.Delivery, pm PoisonMessage) (bool, error) {
		out = append(out, pm)
		return limit <= 0 || len(out) < limit, nil
	})
	return out, waiting, err
}

// ReplayPoison implements DeadLetters. Each message route accepts is
// published to its origin queue with publisher confirms and then
// acknowledged on the poison queue, which removes it; the declined ones are
// put back where they were when it ends. The messages it offers are those in
// the queue when it starts.
//
// A replayed event goes straight to the events queue, not through the events
// exchange: other applications' queues bound to that exchange got the event
// the first time, and an event whose routing key no binding matches (a
// poisoned one may have none) would be dropped after being taken off here.
func (a *AMQP) ReplayPoison(ctx context.Context, topic string, route func(PoisonMessage) (string, bool)) ([]PoisonMessage, error) {
	var replayed []PoisonMessage
	_, err := a.dlqGet(ctx, topic, func(d amqp091.Delivery, pm PoisonMessage) (bool, error) {
		to, ok := route(pm)
		if !ok {
			return true, nil // unacked: requeued when the channel closes
		}
		if err := a.publish(to, "", to, []*message.Message{ReplayMessage(pm)}); err != nil {
			return false, fmt.Errorf("replay %s from %s to %s: %w", pm.Message.UUID, topic, to, err)
		}
		if err := d.Ack(false); err != nil {
			return false, fmt.Errorf("replayed %s to %s but could not remove it from %s (it will be replayed again): %w",
				pm.Message.UUID, to, topic, err)
		}
		replayed = append(replayed, pm)
		return true, nil
	})
	return replayed, err
}

// dlqGet gets the messages of queue topic one by one, as many as it held
// when dlqGet started, and calls fn with each until fn returns false or an
// error. It returns that count. Messages fn did not acknowledge go back to
// the queue when dlqGet closes its channel. A queue that does not exist
// holds nothing.
func (a *AMQP) dlqGet(ctx context.Context, topic string,
	fn func(d amqp091.Delivery, pm PoisonMessage) (bool, error)) (int, error) {
	if topic == "" {
		return 0, errors.New("amqp: empty topic name")
	}
	a.mu.Lock()
	closed := a.closed
	a.mu.Unlock()
	if closed {
		return 0, ErrClosed
	}
	conn, err := a.pub.connection()
	if err != nil {
		return 0, fmt.Errorf("read %s on RabbitMQ at %s: %w", topic, a.url, err)
	}
	ch, err := conn.Channel()
	if err != nil {
		return 0, fmt.Errorf("read %s: open channel: %w", topic, err)
	}
	// Closing the channel requeues every delivery not acknowledged.
	defer func() { _ = ch.Close() }()
	q, err := ch.QueueDeclarePassive(topic, true, false, false, false, nil)
	if err != nil {
		var aerr *amqp091.Error
		if errors.As(err, &aerr) && aerr.Code == amqp091.NotFound {
			return 0, nil
		}
		return 0, fmt.Errorf("read %s: %w", topic, err)
	}
	for i := range q.Messages {
		if err := ctx.Err(); err != nil {
			return q.Messages, err
		}
		d, ok, err := ch.Get(topic, false)
		if err != nil {
			return q.Messages, fmt.Errorf("read %s: basic.get: %w", topic, err)
		}
		if !ok {
			break // consumed by someone else meanwhile
		}
		msg, _ := a.marshaler.Unmarshal(d) // never fails
		pm := PoisonMessage{Topic: topic, Position: strconv.Itoa(i + 1), Message: msg}
		more, err := fn(d, pm)
		if err != nil || !more {
			return q.Messages, err
		}
	}
	return q.Messages, nil
}
