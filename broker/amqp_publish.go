package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Publishing errors of the AMQP broker, for errors.Is.
var (
	// ErrUnroutable: RabbitMQ returned a mandatory publish because no queue
	// is bound for it (after eventpipe declared its topology once more).
	ErrUnroutable = errors.New("no queue takes the message (returned as unroutable)")
	// ErrBlocked: RabbitMQ blocked the publishing connection (memory or
	// disk alarm); publishes fail at once until it unblocks.
	ErrBlocked = errors.New("RabbitMQ blocked publishing")
	// errNacked: RabbitMQ nacked the publish (an internal error of the queue).
	errNacked = errors.New("RabbitMQ nacked the message")
	// errChannelClosed: the channel closed before the message was confirmed.
	errChannelClosed = errors.New("channel closed before RabbitMQ confirmed the message")
)

// amqpPublishing is one message to publish and, once its confirm came,
// what became of it.
type amqpPublishing struct {
	pub amqp091.Publishing
	err error
}

// amqpBatch is the messages of one publish call: done closes once every
// one was confirmed, nacked, returned or lost with its channel.
type amqpBatch struct {
	items   []amqpPublishing
	pending atomic.Int64
	done    chan struct{}
}

func newAMQPBatch(pubs []amqp091.Publishing) *amqpBatch {
	b := &amqpBatch{items: make([]amqpPublishing, len(pubs)), done: make(chan struct{})}
	for i, p := range pubs {
		b.items[i].pub = p
	}
	b.pending.Store(int64(len(pubs)))
	return b
}

// settle records the outcome of item i (written before done closes, read after).
func (b *amqpBatch) settle(i int, err error) {
	b.items[i].err = err
	if b.pending.Add(-1) == 0 {
		close(b.done)
	}
}

// amqpInFlight is a published message awaiting its confirm.
type amqpInFlight struct {
	batch *amqpBatch
	index int
}

// amqpPubChannel is one channel in confirm mode with many messages awaiting
// a confirm. Confirms are matched to messages by delivery tag; a mandatory
// message RabbitMQ cannot route comes back (basic.return) before its
// confirm and is matched by message id. amqp091's DeferredConfirmation
// cannot tell a returned message from a delivered one, hence this loop.
type amqpPubChannel struct {
	ch *amqp091.Channel

	sendMu sync.Mutex // one sender at a time: the delivery tag is the channel's next sequence number

	mu       sync.Mutex
	inFlight map[uint64]amqpInFlight
	dead     bool
}

// openAMQPPubChannel opens a confirm-mode channel on conn and starts
// matching its confirms.
func openAMQPPubChannel(conn *amqp091.Connection) (*amqpPubChannel, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("enable publisher confirms: %w", err)
	}
	pc := &amqpPubChannel{ch: ch, inFlight: make(map[uint64]amqpInFlight)}
	// Buffered: amqp091 delivers confirms and returns from its reader
	// goroutine and blocks on a full channel.
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1024))
	returns := ch.NotifyReturn(make(chan amqp091.Return, 64))
	go pc.match(confirms, returns)
	return pc, nil
}

// match settles each in-flight message when its confirm comes: nacked, or
// returned (a basic.return for a message precedes its basic.ack, and
// amqp091 hands both over in frame order), or delivered. When the channel
// closes, what is left fails with errChannelClosed.
func (pc *amqpPubChannel) match(confirms <-chan amqp091.Confirmation, returns <-chan amqp091.Return) {
	returned := map[string]int{} // message id -> returns not matched yet
	for confirms != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			returned[r.MessageId]++
		case c, ok := <-confirms:
			if !ok {
				confirms = nil
				continue
			}
			for drained := false; !drained && returns != nil; {
				select {
				case r, ok := <-returns:
					if !ok {
						returns = nil
					} else {
						returned[r.MessageId]++
					}
				default:
					drained = true
				}
			}
			pc.mu.Lock()
			f, ok := pc.inFlight[c.DeliveryTag]
			delete(pc.inFlight, c.DeliveryTag)
			pc.mu.Unlock()
			if !ok {
				continue
			}
			var err error
			id := f.batch.items[f.index].pub.MessageId
			switch {
			case !c.Ack:
				err = errNacked
			case returned[id] > 0:
				err = ErrUnroutable
				if returned[id]--; returned[id] == 0 {
					delete(returned, id)
				}
			}
			f.batch.settle(f.index, err)
		}
	}
	pc.mu.Lock()
	pc.dead = true
	left := pc.inFlight
	pc.inFlight = nil
	pc.mu.Unlock()
	for _, f := range left {
		f.batch.settle(f.index, errChannelClosed)
	}
}

// send publishes the items of b from index from on, in order, mandatory
// when asked. Items it could not send are settled with the error.
func (pc *amqpPubChannel) send(ctx context.Context, exchange, key string, mandatory bool, b *amqpBatch, idx []int) {
	pc.sendMu.Lock()
	defer pc.sendMu.Unlock()
	for n, i := range idx {
		tag := pc.ch.GetNextPublishSeqNo()
		pc.mu.Lock()
		if pc.dead {
			pc.mu.Unlock()
			for _, j := range idx[n:] {
				b.settle(j, errChannelClosed)
			}
			return
		}
		pc.inFlight[tag] = amqpInFlight{batch: b, index: i}
		pc.mu.Unlock()
		if err := pc.ch.PublishWithContext(ctx, exchange, key, mandatory, false, b.items[i].pub); err != nil {
			pc.mu.Lock()
			_, mine := pc.inFlight[tag]
			delete(pc.inFlight, tag)
			pc.mu.Unlock()
			if mine {
				b.settle(i, err)
			}
			for _, j := range idx[n+1:] {
				b.settle(j, err)
			}
			return
		}
	}
}

func (pc *amqpPubChannel) usable() bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return !pc.dead && !pc.ch.IsClosed()
}

// amqpPubConn is the publishing connection and its confirm-mode channels;
// it redials when RabbitMQ closed the connection and reopens closed
// channels. It tracks connection.blocked: while RabbitMQ blocks the
// connection, sends fail at once with ErrBlocked (a blocked socket takes
// no writes, and amqp091 ignores contexts while writing).
type amqpPubConn struct {
	url   string
	cfg   amqp091.Config
	stats *amqpStats

	mu      sync.Mutex // guards what follows; held while dialling
	conn    *amqp091.Connection
	chans   []*amqpPubChannel
	closed  bool
	blocked string        // reason while blocked, else ""
	unblock chan struct{} // closed when a block starts, to wake waiters

	next atomic.Uint64
}

func newAMQPPubConn(url string, cfg amqp091.Config, channels int, stats *amqpStats) *amqpPubConn {
	return &amqpPubConn{url: url, cfg: cfg, stats: stats, chans: make([]*amqpPubChannel, channels),
		unblock: make(chan struct{})}
}

// connection returns the open connection, dialling a new one if RabbitMQ
// closed the last. One caller dials; the others wait for it.
func (p *amqpPubConn) connection() (*amqp091.Connection, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.connectionLocked()
}

func (p *amqpPubConn) connectionLocked() (*amqp091.Connection, error) {
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
	p.setBlocked("")
	go p.watchBlocked(conn, conn.NotifyBlocked(make(chan amqp091.Blocking, 4)))
	return conn, nil
}

// watchBlocked follows conn's connection.blocked and connection.unblocked.
func (p *amqpPubConn) watchBlocked(conn *amqp091.Connection, blockings <-chan amqp091.Blocking) {
	for b := range blockings {
		p.mu.Lock()
		if p.conn == conn {
			reason := ""
			if b.Active {
				reason = b.Reason
				if reason == "" {
					reason = "no reason given"
				}
			}
			p.setBlocked(reason)
		}
		p.mu.Unlock()
	}
}

// setBlocked records a block (reason != "") or its end; p.mu is held.
func (p *amqpPubConn) setBlocked(reason string) {
	if reason != "" && p.blocked == "" {
		close(p.unblock)
	}
	if reason == "" && p.blocked != "" {
		p.unblock = make(chan struct{})
	}
	p.blocked = reason
	p.stats.blocked.Store(reason != "")
}

// blockedErr returns ErrBlocked with the reason while the connection is
// blocked, and a channel that closes when a block starts.
func (p *amqpPubConn) blockedErr() (error, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.blocked != "" {
		return fmt.Errorf("%w (%s): publishing fails until the alarm clears", ErrBlocked, p.blocked), nil
	}
	return nil, p.unblock
}

func (p *amqpPubConn) connected() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.closed && p.conn != nil && !p.conn.IsClosed()
}

// channel returns a usable channel, round robin, reopening it if closed.
func (p *amqpPubConn) channel() (*amqpPubChannel, error) {
	i := int(p.next.Add(1) % uint64(len(p.chans)))
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc := p.chans[i]; pc != nil && pc.usable() {
		return pc, nil
	}
	conn, err := p.connectionLocked()
	if err != nil {
		return nil, err
	}
	pc, err := openAMQPPubChannel(conn)
	if err != nil {
		return nil, err
	}
	p.chans[i] = pc
	return pc, nil
}

// publish sends pubs in order on one channel and waits until each is
// confirmed, or ctx ends, or RabbitMQ blocks the connection. It returns
// the error of each publishing (nil when delivered), or one error for
// all when none could be sent or the wait ended early.
func (p *amqpPubConn) publish(ctx context.Context, exchange, key string, mandatory bool, pubs []amqp091.Publishing) ([]error, error) {
	if err, _ := p.blockedErr(); err != nil {
		p.stats.blockedPublishes.Add(uint64(len(pubs)))
		return nil, err
	}
	pc, err := p.channel()
	if err != nil {
		return nil, err
	}
	b := newAMQPBatch(pubs)
	idx := make([]int, len(pubs))
	for i := range idx {
		idx[i] = i
	}
	pc.send(ctx, exchange, key, mandatory, b, idx)
	_, blocked := p.blockedErr()
	select {
	case <-b.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-blocked:
		// Sent messages may still be confirmed once the alarm clears; the
		// caller retries them (at-least-once), it does not wait.
		p.stats.blockedPublishes.Add(uint64(len(pubs)))
		err, _ := p.blockedErr()
		if err == nil {
			err = ErrBlocked
		}
		return nil, err
	}
	errs := make([]error, len(pubs))
	for i := range b.items {
		errs[i] = b.items[i].err
	}
	return errs, nil
}

// close closes the connection (its channels with it); in-flight messages
// fail with errChannelClosed.
func (p *amqpPubConn) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	conn := p.conn
	p.mu.Unlock()
	if conn != nil {
		_ = closeAMQPConn(conn)
	}
}
