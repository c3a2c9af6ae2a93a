package broker

import (
	"context"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/eventpipe/eventpipe/task"
)

// amqpConsumer is the one AMQP consumer of a queue in this process. Every
// Subscribe to the queue takes its messages from it, and it hands out up
// to broker.amqp.prefetch messages at once without waiting for their acks
// (Watermill's router runs a handler goroutine per message it receives),
// so the messages in flight are the prefetch, whatever the number of
// subscriptions, channels or consumers.
//
// Why not watermill-amqp's subscriber: it waits for each message's ack
// before handing out the next, so concurrency needed one consumer and
// channel per message in flight, each with its own round trips.
//
// Per-key order: messages that carry a partition key (tasks do) are handed
// out one at a time per key, in the order RabbitMQ delivered them; the
// next of a key waits until the previous one was acked. A nack requeues
// the waiting ones of its key too, so they come back in order.
//
// The consumer redials and re-declares its queue after a connection loss
// or a basic.cancel (queue deleted), until the broker closes.
type amqpConsumer struct {
	a     *AMQP
	topic string
	out   chan *message.Message // shared by the subscriptions
	stop  context.CancelFunc
	refs  int // subscriptions, guarded by a.mu
	done  chan struct{}
}

// startConsumer starts consuming topic; its context ends when the last
// subscription ends or the broker closes.
func (a *AMQP) startConsumer(topic string) *amqpConsumer {
	ctx, stop := context.WithCancel(a.ctx)
	c := &amqpConsumer{a: a, topic: topic, out: make(chan *message.Message), stop: stop, done: make(chan struct{})}
	go c.run(ctx)
	return c
}

// subscribe returns a channel of c's messages until ctx ends.
func (c *amqpConsumer) subscribe(ctx context.Context) <-chan *message.Message {
	out := make(chan *message.Message)
	go func() {
		defer close(out)
		defer c.a.release(c)
		for {
			select {
			case <-ctx.Done():
				return
			case <-c.done:
				return
			case m := <-c.out:
				select {
				case out <- m:
				case <-ctx.Done():
					m.Nack()
					return
				}
			}
		}
	}()
	return out
}

// run consumes until ctx ends, one channel session at a time.
func (c *amqpConsumer) run(ctx context.Context) {
	defer close(c.done)
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		started := time.Now()
		err := c.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > 10*time.Second {
			wait = 100 * time.Millisecond
		}
		c.a.logger.Info("AMQP consumer stopped, consuming again", watermill.LogFields{
			"topic": c.topic, "err": errString(err), "retry_in": wait.String()})
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 3*time.Second)
	}
}

func errString(err error) string {
	if err == nil {
		return "consumer cancelled by RabbitMQ (queue deleted?)"
	}
	return err.Error()
}

// amqpKeyed is the messages of one partition key waiting for the one in flight.
type amqpKeyed struct {
	waiting []*message.Message
}

// session consumes on one channel until it closes or ctx ends. Messages
// still unacked when it ends are redelivered by RabbitMQ.
func (c *amqpConsumer) session(ctx context.Context) error {
	a := c.a
	conn, err := a.consumerConnection()
	if err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer func() { _ = ch.Close() }()
	if err := a.topology.declare(ch, c.topic); err != nil {
		return err
	}
	if err := ch.Qos(a.cfg.Prefetch, 0, false); err != nil {
		return err
	}
	// Consume, not ConsumeWithContext: that one cancels from a goroutine of
	// its own, whose basic.cancel races our channel.close for the replies
	// (amqp091 matches replies to calls by arrival) and hangs one of them.
	tag := "eventpipe-" + watermill.NewShortUUID()
	deliveries, err := ch.Consume(c.topic, tag, false, false, false, false, nil)
	if err != nil {
		return err
	}
	var (
		mu       sync.Mutex
		keys     = map[string]*amqpKeyed{}
		inFlight sync.WaitGroup
	)
	// settled runs when msg (key k) was acked or nacked: the next message
	// of its key goes out, or, after a nack, they all go back.
	settled := func(key string, nacked bool) {
		if key == "" {
			return
		}
		mu.Lock()
		kq := keys[key]
		if kq == nil {
			mu.Unlock()
			return
		}
		if nacked {
			waiting := kq.waiting
			delete(keys, key)
			mu.Unlock()
			for _, m := range waiting {
				m.Nack()
			}
			return
		}
		if len(kq.waiting) == 0 {
			delete(keys, key)
			mu.Unlock()
			return
		}
		next := kq.waiting[0]
		kq.waiting = kq.waiting[1:]
		mu.Unlock()
		c.dispatch(ctx, next)
	}
	acks := newAMQPAcker(ch, a.cfg.Prefetch)
	hand := func(msg *message.Message, tag uint64, key string) {
		defer inFlight.Done()
		select {
		case <-msg.Acked():
			acks.settle(tag, true)
			settled(key, false)
		case <-msg.Nacked():
			acks.settle(tag, false)
			settled(key, true)
		}
	}
	defer func() {
		// Messages waiting behind their key never went out: back to the queue.
		mu.Lock()
		for k, kq := range keys {
			for _, m := range kq.waiting {
				m.Nack()
			}
			delete(keys, k)
		}
		mu.Unlock()
		if ctx.Err() == nil {
			acks.stop()
			return // the channel is gone: what is in flight is redelivered
		}
		// Stopping: cancel the consumer (no new deliveries; those buffered
		// are requeued when the channel closes), and let the handlers in
		// flight ack on this channel until the broker closes.
		_ = ch.Cancel(tag, false)
		done := make(chan struct{})
		go func() { inFlight.Wait(); close(done) }()
		select {
		case <-done:
		case <-a.ctx.Done():
		}
		acks.stop() // after sending what the handlers settled
	}()
	for {
		var d amqp091.Delivery
		var ok bool
		select {
		case d, ok = <-deliveries:
		case <-ctx.Done():
			return nil
		}
		if !ok {
			if conn.IsClosed() || ch.IsClosed() {
				return amqp091.ErrClosed
			}
			return nil // basic.cancel: the queue was deleted
		}
		msg, _ := a.marshaler.Unmarshal(d) // never fails
		// Ends when the message is acked or nacked (Watermill's contract),
		// or when the last subscription ends.
		msgCtx, cancel := context.WithCancel(ctx)
		msg.SetContext(msgCtx)
		key := msg.Metadata.Get(task.MetaPartitionKey)
		inFlight.Add(1)
		go func(tag uint64) {
			hand(msg, tag, key)
			cancel()
		}(d.DeliveryTag)
		if key != "" {
			mu.Lock()
			if kq := keys[key]; kq != nil {
				kq.waiting = append(kq.waiting, msg)
				mu.Unlock()
				continue
			}
			keys[key] = &amqpKeyed{}
			mu.Unlock()
		}
		c.dispatch(ctx, msg)
	}
}

// dispatch hands msg to a subscription, waiting while publishing is
// blocked (its handler could only fail); msg is nacked if ctx ends first.
func (c *amqpConsumer) dispatch(ctx context.Context, msg *message.Message) {
	for {
		_, blockStarts := c.a.pub.blockedErr()
		if blockStarts != nil {
			break
		}
		select {
		case <-ctx.Done():
			msg.Nack()
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	select {
	case c.out <- msg:
	case <-ctx.Done():
		msg.Nack()
	}
}

// amqpSettlement is a handler's verdict on one delivery.
type amqpSettlement struct {
	tag uint64
	ack bool
}

// amqpAcker sends a channel's acks and nacks from one goroutine, taking
// what handlers settled meanwhile as a batch: the settled deliveries at
// the head of the channel (every earlier tag settled too) go out as one
// basic.ack with multiple set, the others one by one at once, so a slow
// message never holds back the acks of later ones. Fewer ack frames mean
// less work for RabbitMQ, the ceiling of the pipeline's throughput.
// Nacks (requeue) go out one by one, before the acks of their batch.
type amqpAcker struct {
	ch    amqpAckChannel
	in    chan amqpSettlement
	quit  chan struct{}
	ended chan struct{}
	once  sync.Once

	// Owned by run.
	batch []amqpSettlement
	state map[uint64]amqpTagState // settled tags at or above base
	base  uint64                  // lowest tag not settled on the wire
}

// amqpAckChannel is the part of *amqp091.Channel the acker uses.
type amqpAckChannel interface {
	Ack(tag uint64, multiple bool) error
	Nack(tag uint64, multiple, requeue bool) error
}

func newAMQPAcker(ch amqpAckChannel, prefetch int) *amqpAcker {
	k := &amqpAcker{ch: ch, in: make(chan amqpSettlement, prefetch), quit: make(chan struct{}), ended: make(chan struct{})}
	go k.run()
	return k
}

// settle hands over a verdict; after stop it is dropped (the channel is
// closing, so RabbitMQ redelivers the message).
func (k *amqpAcker) settle(tag uint64, ack bool) {
	select {
	case k.in <- amqpSettlement{tag: tag, ack: ack}:
	case <-k.quit:
	}
}

// stop sends what was settled so far and ends the acker.
func (k *amqpAcker) stop() {
	k.once.Do(func() { close(k.quit) })
	<-k.ended
}

func (k *amqpAcker) run() {
	defer close(k.ended)
	for {
		select {
		case s := <-k.in:
			k.process(append(k.batch[:0], s))
		case <-k.quit:
			if !k.runBatch() {
				return
			}
		}
	}
}

// runBatch sends what handlers settled so far; false when there was nothing.
func (k *amqpAcker) runBatch() bool { return k.process(k.batch[:0]) }

// process sends batch and whatever else is waiting, and reports whether
// there was anything.
func (k *amqpAcker) process(batch []amqpSettlement) bool {
	for drained := false; !drained; {
		select {
		case s := <-k.in:
			batch = append(batch, s)
		default:
			drained = true
		}
	}
	k.batch = batch
	if len(batch) == 0 {
		return false
	}
	if k.state == nil {
		k.state, k.base = map[uint64]amqpTagState{}, 1 // a channel's tags start at 1
	}
	for _, s := range batch {
		if s.ack {
			k.state[s.tag] = amqpAckPending
			continue
		}
		_ = k.ch.Nack(s.tag, false, true)
		k.state[s.tag] = amqpSettled
	}
	// The head: every tag below base is settled on the wire.
	var upTo uint64
	for st, ok := k.state[k.base]; ok; st, ok = k.state[k.base] {
		if st == amqpAckPending {
			upTo = k.base
		}
		delete(k.state, k.base)
		k.base++
	}
	if upTo > 0 {
		_ = k.ch.Ack(upTo, true)
	}
	for _, s := range batch {
		if s.ack && k.state[s.tag] == amqpAckPending {
			_ = k.ch.Ack(s.tag, false)
			k.state[s.tag] = amqpSettled
		}
	}
	return true
}

// amqpTagState is what the acker knows of a delivery tag at or above its base.
type amqpTagState uint8

const (
	amqpAckPending amqpTagState = iota + 1 // acked by its handler, not yet on the wire
	amqpSettled                            // acked or nacked on the wire
)
