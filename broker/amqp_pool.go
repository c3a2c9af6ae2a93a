package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// amqpPool publishes with publisher confirms over a fixed number of
// channels on one connection, which it redials when RabbitMQ closed it.
//
// A slot holds a channel or nil; a publisher takes a slot, (re)opens its
// channel if needed and always puts the slot back, so an outage can close
// channels but never shrink the pool.
type amqpPool struct {
	url string
	cfg amqp091.Config

	mu     sync.Mutex // guards conn, closed; held while dialling
	conn   *amqp091.Connection
	closed bool

	slots chan *amqp091.Channel
}

func newAMQPPool(url string, cfg amqp091.Config, size int) *amqpPool {
	p := &amqpPool{url: url, cfg: cfg, slots: make(chan *amqp091.Channel, size)}
	for range size {
		p.slots <- nil
	}
	return p
}

// connection returns the open connection, dialling a new one if RabbitMQ
// closed the last. One caller dials; the others wait for it.
func (p *amqpPool) connection() (*amqp091.Connection, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	if p.conn != nil && !p.conn.IsClosed() {
		return p.conn, nil
	}
	conn, err := amqp091.DialConfig(p.url, p.cfg)
	if err != nil {
		return nil, err
	}
	p.conn = conn
	return conn, nil
}

func (p *amqpPool) connected() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.closed && p.conn != nil && !p.conn.IsClosed()
}

// open opens a channel in confirm mode.
func (p *amqpPool) open() (*amqp091.Channel, error) {
	conn, err := p.connection()
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("enable publisher confirms: %w", err)
	}
	return ch, nil
}

// publish sends every publishing on one channel, then waits for all their
// confirms: one round trip (and one RabbitMQ disk sync) for the lot rather
// than one each. It returns the publishings that were not confirmed, in
// order, with the reason; nil when all were.
//
// The channel goes back to the pool once the publishings are sent, before
// their confirms arrive: a confirm takes a RabbitMQ disk sync (milliseconds),
// and holding the channel for it would cap the messages awaiting a confirm
// at the pool size, and with it the throughput of every handler.
func (p *amqpPool) publish(ctx context.Context, exchange, key string, pubs []amqp091.Publishing) ([]amqp091.Publishing, error) {
	confirms, sendErr := p.send(ctx, exchange, key, pubs)
	var failed []amqp091.Publishing
	var waitErr error
	for i, dc := range confirms {
		ok, err := dc.WaitContext(ctx)
		if err != nil || !ok {
			failed = append(failed, pubs[i])
			if err == nil {
				err = errors.New("RabbitMQ did not confirm the message (nack or channel closed)")
			}
			waitErr = err
		}
	}
	failed = append(failed, pubs[len(confirms):]...)
	if len(failed) == 0 {
		return nil, nil
	}
	return failed, errors.Join(sendErr, waitErr)
}

// send publishes pubs in order on a channel of the pool until one fails,
// and returns the confirmations of those sent.
func (p *amqpPool) send(ctx context.Context, exchange, key string, pubs []amqp091.Publishing) ([]*amqp091.DeferredConfirmation, error) {
	var ch *amqp091.Channel
	select {
	case ch = <-p.slots:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { p.slots <- ch }()
	if ch == nil || ch.IsClosed() {
		var err error
		if ch, err = p.open(); err != nil {
			ch = nil
			return nil, err
		}
	}
	confirms := make([]*amqp091.DeferredConfirmation, 0, len(pubs))
	for _, pub := range pubs {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, false, false, pub)
		if err != nil {
			return confirms, err
		}
		confirms = append(confirms, dc)
	}
	return confirms, nil
}

// close closes every channel and the connection; publishing fails after it.
func (p *amqpPool) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	conn := p.conn
	p.mu.Unlock()
	if conn != nil {
		// Closing the connection closes its channels; publishers waiting
		// for confirms get a nack and fail with ErrClosed.
		_ = conn.Close()
	}
}
