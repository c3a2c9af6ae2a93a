package broker

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/eventpipe/eventpipe/config"
)

// Embedded is the in-process broker: one Watermill GoChannel. Know its limits:
//   - not durable: messages live in memory and are lost when the process stops;
//   - each Subscriber(topic) is a consumer group: every group gets every
//     message (GoChannel fans out), and within a group each message goes to
//     one of the group's subscriptions, so N subscriptions have N messages in
//     flight (see group);
//   - a nacked message is resent at once, in a loop;
//   - a message published to a topic with no subscriber is dropped, so
//     subscribe (start the router) before publishing;
//   - Publish waits while a consumer group already holds buffer_size
//     messages: backpressure, up to the HTTP ingest endpoint.
type Embedded struct {
	ch     *gochannel.GoChannel
	closed atomic.Bool
	buffer int // messages a consumer group holds before publishers wait

	mu        sync.Mutex
	published map[string]*atomic.Int64 // by topic, counted for Backlog
	groups    []*group

	// done is closed by Close: messages given back to a group are dropped.
	done chan struct{}
}

// NewEmbedded returns an embedded broker.
func NewEmbedded(cfg config.EmbeddedBroker, logger watermill.LoggerAdapter) *Embedded {
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	return &Embedded{published: map[string]*atomic.Int64{}, buffer: max(cfg.BufferSize, 0), done: make(chan struct{}), ch: gochannel.NewGoChannel(gochannel.Config{
		OutputChannelBuffer: int64(cfg.BufferSize),
		// Persistent would keep every message in memory forever for late subscribers.
		Persistent: false,
	}, logger)}
}

// Publisher returns the GoChannel, counting what it publishes; its Close is a no-op.
func (e *Embedded) Publisher() message.Publisher { return embeddedPublisher{e} }

type embeddedPublisher struct{ e *Embedded }

// Publish waits, holding no lock, while a consumer group of topic already
// holds buffer_size unacked messages (backpressure, up to the HTTP ingest).
// GoChannel's own BlockPublishUntilSubscriberAck is not used: it waits
// under GoChannel's subscribers lock, and a Subscribe queued behind it then
// blocks every other Publish, including the one the busy handler needs to
// finish: a deadlock.
func (p embeddedPublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, msg := range msgs {
		if err := p.e.waitForRoom(topic); err != nil {
			return err
		}
		if err := p.e.ch.Publish(topic, msg); err != nil {
			return err
		}
		p.e.counter(topic).Add(1)
	}
	return nil
}

// waitForRoom returns once every consumer group of topic holds fewer than
// buffer_size unacked messages, or an error once the broker is closed.
func (e *Embedded) waitForRoom(topic string) error {
	for wait := 50 * time.Microsecond; ; wait = min(2*wait, 10*time.Millisecond) {
		if e.closed.Load() {
			return ErrClosed
		}
		if e.backlog(topic) < int64(max(e.buffer, 1)) {
			return nil
		}
		time.Sleep(wait)
	}
}

// backlog is the largest count of unacked messages over topic's active groups.
func (e *Embedded) backlog(topic string) int64 {
	e.mu.Lock()
	groups := e.groups
	e.mu.Unlock()
	var n int64
	for _, g := range groups {
		g.mu.Lock()
		same, base, active := g.topic == topic, g.base, g.members > 0
		g.mu.Unlock()
		if same && active {
			n = max(n, e.counter(topic).Load()-base-g.acked.Load())
		}
	}
	return n
}

func (embeddedPublisher) Close() error { return nil }

func (e *Embedded) counter(topic string) *atomic.Int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.published[topic]
	if !ok {
		c = new(atomic.Int64)
		e.published[topic] = c
	}
	return c
}

// Backlog reports, per subscribed topic, the messages published since its
// consumer group subscribed that the group has not acked yet (the largest
// over the topic's groups). Partition is "0": the embedded broker has one.
func (e *Embedded) Backlog(context.Context) ([]Backlog, error) {
	e.mu.Lock()
	groups := e.groups
	e.mu.Unlock()
	// Never hold e.mu while taking g.mu: group.Subscribe takes them the other way.
	topics := map[string]bool{}
	for _, g := range groups {
		g.mu.Lock()
		if g.members > 0 {
			topics[g.topic] = true
		}
		g.mu.Unlock()
	}
	out := make([]Backlog, 0, len(topics))
	for topic := range topics {
		out = append(out, Backlog{Topic: topic, Partition: "0", Messages: max(e.backlog(topic), 0)})
	}
	return out, nil
}

// Subscriber returns a new consumer group: its subscriptions compete for
// the messages of a topic. Its Close is a no-op.
func (e *Embedded) Subscriber(string) (message.Subscriber, error) {
	if e.closed.Load() {
		return nil, ErrClosed
	}
	g := &group{e: e, back: make(chan *message.Message)}
	e.mu.Lock()
	e.groups = append(e.groups, g)
	e.mu.Unlock()
	return g, nil
}

// Ping returns ErrClosed after Close, else nil: there is nothing to reach.
func (e *Embedded) Ping(context.Context) error {
	if e.closed.Load() {
		return ErrClosed
	}
	return nil
}

// Close closes the GoChannel: subscriptions end and Publish fails.
func (e *Embedded) Close() error {
	if e.closed.CompareAndSwap(false, true) {
		close(e.done)
	}
	return e.ch.Close()
}

// group gives GoChannel, which only fans out, competing consumers. GoChannel
// keeps one message in flight per subscription until it is acked; the group
// takes each message from its one GoChannel subscription, hands it to a free
// member and acks it there, and the member redelivers it to its handler until
// acked. Watermill has no in-memory pub/sub with competing consumers, hence
// this small piece. Acking before the handler does loses nothing that GoChannel
// would keep: the embedded broker is not durable anyway.
//
// A member that leaves while it holds a message gives it back to the group
// (see giveBack), so another member, or a later subscription, delivers it.
type group struct {
	e *Embedded
	// acked counts messages the group's handlers acked; base is the
	// topic's published count when the group subscribed (for Backlog).
	acked atomic.Int64

	mu      sync.Mutex
	members int
	topic   string
	base    int64
	// work buffers messages taken from GoChannel until a member takes them;
	// feed closes it when the GoChannel subscription ends.
	work chan *message.Message
	stop context.CancelFunc
	// back hands messages given back by leaving members to the others. It
	// outlives work, which each first member makes anew: a message given
	// back by the last member waits there for the next subscription.
	back chan *message.Message
}

// Subscribe adds a member to the group. All members use one topic.
func (g *group) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.members == 0 {
		// The subscription outlives any one member: the last to leave ends it.
		feedCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
		src, err := g.e.ch.Subscribe(feedCtx, topic)
		if err != nil {
			stop()
			return nil, err
		}
		g.work, g.stop, g.topic = make(chan *message.Message, g.e.buffer), stop, topic
		g.base = g.e.counter(topic).Load() - g.acked.Load()
		go feed(src, g.work)
	} else if topic != g.topic {
		return nil, fmt.Errorf("embedded subscriber of %q cannot also subscribe to %q", g.topic, topic)
	}
	g.members++
	out := make(chan *message.Message)
	go g.member(ctx, g.work, out)
	return out, nil
}

// feed queues each message for the members, then acks it to GoChannel so
// it sends the next (Publish bounds how many wait: see waitForRoom).
func feed(src <-chan *message.Message, work chan<- *message.Message) {
	defer close(work)
	for msg := range src {
		work <- msg
		msg.Ack()
	}
}

// member delivers messages to its handler one at a time, resending a
// message until it is acked. It leaves when ctx ends or the broker closes;
// the last member to leave ends the group's GoChannel subscription. A message
// it holds when ctx ends goes back to the group: at once if its handler does
// not have it, else once its handler nacks it (see settle).
func (g *group) member(ctx context.Context, work <-chan *message.Message, out chan<- *message.Message) {
	defer func() {
		close(out)
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.members--; g.members == 0 {
			g.stop()
			// Free feed if it is handing over a message nobody will take.
			go func() {
				for range work {
				}
			}()
		}
	}()
	for {
		var msg *message.Message
		select {
		case msg = <-g.back:
		case m, ok := <-work:
			if !ok {
				return
			}
			msg = m
		case <-ctx.Done():
			return
		}
		if ctx.Err() != nil {
			// select picks at random among ready cases: a message may come
			// in although ctx has ended.
			go g.giveBack(msg)
			return
		}
		for acked := false; !acked; {
			delivery := msg.Copy()
			delivery.SetContext(ctx)
			select {
			case out <- delivery:
			case <-ctx.Done():
				go g.giveBack(msg)
				return
			}
			select {
			case <-delivery.Acked():
				acked = true
				g.acked.Add(1)
			case <-delivery.Nacked():
			case <-ctx.Done():
				go g.settle(msg, delivery)
				return
			}
		}
	}
}

// settle waits for the handler that still has msg after its subscription
// ended: the router lets running handlers finish (a graceful drain), so an
// ack counts, and a nack (a handler aborted at shutdown) gives msg back to
// the group rather than dropping it.
func (g *group) settle(msg, delivery *message.Message) {
	select {
	case <-delivery.Acked():
		g.acked.Add(1)
	case <-delivery.Nacked():
		g.giveBack(msg)
	case <-g.e.done:
	}
}

// giveBack waits until a member of the group takes msg, or drops it when the
// broker closes (the embedded broker is not durable).
func (g *group) giveBack(msg *message.Message) {
	select {
	case g.back <- msg:
	case <-g.e.done:
	}
}

// Close is a no-op: the Broker owns the GoChannel.
func (g *group) Close() error { return nil }
