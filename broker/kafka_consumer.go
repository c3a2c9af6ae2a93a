package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

const (
	// kafkaMaxBufferedRecords and kafkaMaxBufferedBytes bound what a topic's
	// consumer keeps fetched and unfinished: polling waits past either. They
	// also bound how far one slow key can hold up the commit of a partition.
	kafkaMaxBufferedRecords = 4096
	kafkaMaxBufferedBytes   = 64 << 20
	// kafkaRedeliverDelay is the pause before a nacked record is handed out
	// again. A nack means the handler's retries and poison queue both failed
	// (the broker is unreachable) or it was cancelled: try again soon, not in
	// a tight loop.
	kafkaRedeliverDelay = 500 * time.Millisecond
	// kafkaCommitInterval is how often finished offsets are committed (also
	// on a rebalance and at Close); a crash re-runs up to this much work
	// besides what was in flight.
	kafkaCommitInterval = time.Second
	// kafkaRevokeWait bounds how long a revoked partition's records in
	// flight may take to finish before the partition is given up without
	// committing past them (they run again on the new owner). Well below the
	// rebalance timeout, so a slow task never stalls the group.
	kafkaRevokeWait = 10 * time.Second
	// Group timings. A member killed without leaving is dropped after the
	// session timeout, so a restarted replica is consuming again well within
	// 30 s; franz-go sizes its JoinGroup wait from the rebalance timeout,
	// so a join never times out client side while the group waits for a
	// dead member (Sarama's 30 s read timeout did, and rejoined forever).
	kafkaSessionTimeout   = 10 * time.Second
	kafkaHeartbeat        = time.Second
	kafkaRebalanceTimeout = 30 * time.Second
)

// kafkaConsumer consumes one topic in the topic's consumer group and hands
// its records to the topic's subscriptions, many at a time per partition:
// each live subscription has one record in flight, records of one key run in
// offset order, records of different keys in parallel, and a partition's
// committed offset stays at its lowest unfinished record (partitionWork).
// A crash re-runs at most what was in flight or finished above it.
//
// Rebalancing is cooperative (incremental): a member joining or leaving
// moves only the partitions that change owner, and the others keep running.
// A revoked partition's records in flight get kafkaRevokeWait to finish and
// commit; what is queued is dropped for the new owner.
type kafkaConsumer struct {
	k      *Kafka
	topic  string
	group  string
	client *kgo.Client
	logger watermill.LoggerAdapter

	wake    chan struct{} // a record was queued (capacity 1)
	space   chan struct{} // the buffer has room again (capacity 1)
	abandon chan struct{} // closed when Close stops waiting for acks
	// msgCtx is the parent of every delivered message's context; it ends
	// when Close stops waiting for acks (not when a subscription ends: a
	// graceful drain lets handlers finish what they started).
	msgCtx       context.Context
	cancelMsgCtx context.CancelFunc
	stop         context.CancelFunc
	stopped      chan struct{} // closed when polling and marking ended

	mu            sync.Mutex
	parts         map[int32]*partitionWork
	queue         []*kafkaRecord // may be handed out now, FIFO from queueHead
	queueHead     int
	buffered      int // records fetched and not finished or dropped
	bufferedBytes int
	inFlight      int
	idle          chan struct{} // closed when inFlight drops to 0; nil while 0
}

// newKafkaConsumer joins topic's consumer group and starts fetching.
func newKafkaConsumer(k *Kafka, topic string) (*kafkaConsumer, error) {
	c := &kafkaConsumer{
		k: k, topic: topic, group: k.ConsumerGroup(topic), logger: k.logger,
		wake: make(chan struct{}, 1), space: make(chan struct{}, 1), abandon: make(chan struct{}),
		stopped: make(chan struct{}), parts: make(map[int32]*partitionWork),
	}
	c.msgCtx, c.cancelMsgCtx = context.WithCancel(context.Background())
	opts := append(k.clientOpts(),
		kgo.ConsumerGroup(c.group),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.SessionTimeout(kafkaSessionTimeout),
		kgo.HeartbeatInterval(kafkaHeartbeat),
		kgo.RebalanceTimeout(kafkaRebalanceTimeout),
		kgo.DisableAutoCommit(), // commitFinished commits, with metadata
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsAssigned(c.onAssigned),
		kgo.OnOffsetsFetched(c.onFetched),
		kgo.OnPartitionsRevoked(c.onRevoked),
		kgo.OnPartitionsLost(c.onLost),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	c.client = cl
	ctx, stop := context.WithCancel(context.Background())
	c.stop = stop
	go c.run(ctx)
	return c, nil
}

// run polls records into the partitions' work until ctx ends, and commits
// what finished every kafkaCommitInterval.
func (c *kafkaConsumer) run(ctx context.Context) {
	defer close(c.stopped)
	commitDone := make(chan struct{})
	go func() {
		defer close(commitDone)
		t := time.NewTicker(kafkaCommitInterval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if err := c.commitFinished(ctx); err != nil && ctx.Err() == nil {
					c.logger.Error("Kafka offset commit failed; retried in a second", err, watermill.LogFields{"topic": c.topic})
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() { <-commitDone }()
	for {
		room := c.waitForRoom(ctx)
		if room == 0 {
			return
		}
		fetches := c.client.PollRecords(ctx, room)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			c.client.AllowRebalance()
			return
		}
		fetches.EachError(func(topic string, partition int32, err error) {
			if !errors.Is(err, context.Canceled) {
				c.logger.Error("Kafka fetch failed", err, watermill.LogFields{"topic": topic, "partition": partition})
			}
		})
		c.add(fetches)
		// Between PollRecords and here no rebalance can run
		// (BlockRebalanceOnPoll), so every record polled belongs to a
		// partition whose work exists.
		c.client.AllowRebalance()
	}
}

// waitForRoom returns how many records may be polled, once that is at least
// one; 0 when ctx ended.
func (c *kafkaConsumer) waitForRoom(ctx context.Context) int {
	for {
		c.mu.Lock()
		room := kafkaMaxBufferedRecords - c.buffered
		if c.bufferedBytes >= kafkaMaxBufferedBytes {
			room = 0
		}
		c.mu.Unlock()
		if room > 0 {
			return room
		}
		select {
		case <-c.space:
		case <-ctx.Done():
			return 0
		}
	}
}

func (c *kafkaConsumer) add(fetches kgo.Fetches) {
	recs := make([]*kafkaRecord, 0, fetches.NumRecords())
	fetches.EachRecord(func(r *kgo.Record) {
		recs = append(recs, &kafkaRecord{offset: r.Offset, epoch: r.LeaderEpoch, key: string(r.Key),
			size: len(r.Value) + len(r.Key), msg: unmarshalRecord(r), partition: r.Partition})
	})
	if len(recs) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	queued := false
	for _, r := range recs {
		p := c.parts[r.partition]
		if p == nil || p.revoked || p.draining {
			continue // cannot happen under BlockRebalanceOnPoll; never commit it
		}
		switch p.add(r) {
		case recordDone:
			continue // finished before a restart or rebalance
		case recordRunnable:
			c.queue = append(c.queue, r)
			queued = true
		}
		c.buffered++
		c.bufferedBytes += r.size
	}
	if queued {
		c.signal(c.wake)
	}
}

func (c *kafkaConsumer) signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// relay feeds one subscription: it hands out one record at a time and
// waits for its ack or nack before taking the next, until ctx ends. A
// record handed out when ctx ends is still waited for (the router's drain
// acks it, and its offset must be committed).
func (c *kafkaConsumer) relay(ctx context.Context, out chan<- *message.Message) {
	defer close(out)
	for {
		r := c.take(ctx)
		if r == nil {
			return
		}
		// A message's context ends once it is acked or nacked (Watermill's
		// contract), or when Close gives up waiting for it.
		msgCtx, cancel := context.WithCancel(c.msgCtx)
		r.msg.SetContext(msgCtx)
		select {
		case out <- r.msg:
		case <-ctx.Done():
			cancel()
			c.putBack(r)
			return
		}
		select {
		case <-r.msg.Acked():
			cancel()
			c.finish(r)
		case <-r.msg.Nacked():
			cancel()
			c.redeliver(r)
		case <-c.abandon:
			cancel()
			return
		}
	}
}

// take waits for a record that may be handed out and counts it in flight;
// nil when ctx ends.
func (c *kafkaConsumer) take(ctx context.Context) *kafkaRecord {
	for {
		c.mu.Lock()
		for c.queueHead < len(c.queue) {
			r := c.queue[c.queueHead]
			c.queue[c.queueHead] = nil
			c.queueHead++
			if r.part.revoked || r.part.draining {
				continue // dropped with its partition
			}
			if c.queueHead == len(c.queue) {
				c.queue, c.queueHead = c.queue[:0], 0
			} else {
				c.signal(c.wake) // more for the next relay
			}
			r.inFlight = true
			r.part.inFlight++
			if c.inFlight++; c.inFlight == 1 {
				c.idle = make(chan struct{})
			}
			c.mu.Unlock()
			return r
		}
		c.queue, c.queueHead = c.queue[:0], 0
		c.mu.Unlock()
		select {
		case <-c.wake:
		case <-ctx.Done():
			return nil
		case <-c.abandon:
			return nil
		}
	}
}

// landed ends r's time in flight; the caller holds c.mu.
func (c *kafkaConsumer) landed(r *kafkaRecord) {
	r.inFlight = false
	r.part.inFlight--
	if c.inFlight--; c.inFlight == 0 {
		close(c.idle)
		c.idle = nil
	}
}

// release forgets r: finished or dropped. The caller holds c.mu.
func (c *kafkaConsumer) release(r *kafkaRecord) {
	c.buffered--
	c.bufferedBytes -= r.size
	if c.buffered < kafkaMaxBufferedRecords && c.bufferedBytes < kafkaMaxBufferedBytes {
		c.signal(c.space)
	}
}

// putBack returns a record taken but not handed out to the front of the queue.
func (c *kafkaConsumer) putBack(r *kafkaRecord) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.landed(r)
	if r.part.revoked {
		c.release(r)
		return
	}
	if c.queueHead > 0 {
		c.queueHead--
		c.queue[c.queueHead] = r
	} else {
		c.queue = append([]*kafkaRecord{r}, c.queue...)
	}
	c.signal(c.wake)
}

// finish records that r was acked: its key's next record may run, and the
// partition's committable offset may advance.
func (c *kafkaConsumer) finish(r *kafkaRecord) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.landed(r)
	c.release(r)
	if r.part.revoked {
		return
	}
	if next := r.part.finish(r); next != nil && !r.part.draining {
		c.queue = append(c.queue, next)
		c.signal(c.wake)
	}
}

// redeliver hands a nacked record out again after kafkaRedeliverDelay, as a
// fresh copy (a Watermill message is acked or nacked once); its key stays
// blocked meanwhile, so later records of the key wait for it.
func (c *kafkaConsumer) redeliver(r *kafkaRecord) {
	c.mu.Lock()
	c.landed(r)
	if r.part.revoked {
		c.release(r)
		c.mu.Unlock()
		return
	}
	r.msg = r.msg.Copy()
	c.mu.Unlock()
	time.AfterFunc(kafkaRedeliverDelay, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if r.part.revoked || r.part.draining {
			return // released with its partition
		}
		c.queue = append(c.queue, r)
		c.signal(c.wake)
	})
}

// commitFinished commits, for every partition whose progress changed, the
// offset of its lowest unfinished record with the offsets finished above it
// in the commit's metadata (partitionWork.doneAbove), so that consuming the
// partition again skips them.
func (c *kafkaConsumer) commitFinished(ctx context.Context) error {
	type point struct {
		eo   kgo.EpochOffset
		meta string
	}
	c.mu.Lock()
	points := make(map[int32]point)
	for _, p := range c.parts {
		if p.revoked {
			continue
		}
		offset, epoch, ok := p.commitPoint()
		if !ok {
			continue
		}
		meta := p.doneAbove(offset)
		if offset == p.committed && meta == p.committedMeta {
			continue
		}
		points[p.partition] = point{kgo.EpochOffset{Epoch: epoch, Offset: offset}, meta}
	}
	c.mu.Unlock()
	if len(points) == 0 {
		return nil
	}
	offsets := make(map[int32]kgo.EpochOffset, len(points))
	for part, pt := range points {
		offsets[part] = pt.eo
	}
	ctx = kgo.PreCommitFnContext(ctx, func(req *kmsg.OffsetCommitRequest) error {
		for i := range req.Topics {
			if req.Topics[i].Topic != c.topic {
				continue
			}
			for j := range req.Topics[i].Partitions {
				rp := &req.Topics[i].Partitions[j]
				if pt, ok := points[rp.Partition]; ok {
					rp.Metadata = &pt.meta
				}
			}
		}
		return nil
	})
	var err error
	c.client.CommitOffsetsSync(ctx, map[string]map[int32]kgo.EpochOffset{c.topic: offsets},
		func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, cerr error) {
			err = cerr
			if cerr != nil {
				return
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			for _, t := range resp.Topics {
				for _, rp := range t.Partitions {
					if perr := kerr.ErrorForCode(rp.ErrorCode); perr != nil {
						err = errors.Join(err, fmt.Errorf("partition %d: %w", rp.Partition, perr))
						continue
					}
					if p, pt := c.parts[rp.Partition], points[rp.Partition]; p != nil && t.Topic == c.topic {
						p.committed, p.committedMeta = pt.eo.Offset, pt.meta
					}
				}
			}
		})
	return err
}

// onFetched reads the offsets finished above each committed offset from the
// commit metadata, so add skips them (see commitFinished).
func (c *kafkaConsumer) onFetched(_ context.Context, _ *kgo.Client, resp *kmsg.OffsetFetchResponse) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	read := func(topic string, partition int32, offset int64, meta *string) {
		p := c.parts[partition]
		if topic != c.topic || p == nil || meta == nil || offset < 0 {
			return
		}
		p.skip = parseDoneAbove(*meta, offset)
		p.committed, p.committedMeta = offset, *meta
	}
	for _, t := range resp.Topics {
		for _, rp := range t.Partitions {
			read(t.Topic, rp.Partition, rp.Offset, rp.Metadata)
		}
	}
	for _, g := range resp.Groups {
		for _, t := range g.Topics {
			for _, rp := range t.Partitions {
				read(t.Topic, rp.Partition, rp.Offset, rp.Metadata)
			}
		}
	}
	return nil
}

func (c *kafkaConsumer) onAssigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range assigned[c.topic] {
		c.parts[p] = newPartitionWork(c.topic, p)
	}
	c.logger.Debug("Kafka partitions assigned", watermill.LogFields{"topic": c.topic, "partitions": assigned[c.topic]})
}

// onRevoked lets the revoked partitions' records in flight finish (bounded
// by kafkaRevokeWait), commits what finished, and drops the rest.
func (c *kafkaConsumer) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	parts := revoked[c.topic]
	c.mu.Lock()
	for _, p := range parts {
		if w := c.parts[p]; w != nil {
			w.draining = true
		}
	}
	c.mu.Unlock()
	deadline := time.Now().Add(kafkaRevokeWait)
	for time.Now().Before(deadline) && c.inFlightOf(parts) > 0 {
		select {
		case <-time.After(10 * time.Millisecond):
		case <-c.abandon:
			deadline = time.Now()
		}
	}
	commitCtx, cancel := context.WithTimeout(ctx, kafkaRevokeWait)
	defer cancel()
	if err := c.commitFinished(commitCtx); err != nil {
		c.logger.Error("Kafka commit of revoked partitions failed; their finished records may run again", err,
			watermill.LogFields{"topic": c.topic, "partitions": parts})
	}
	c.drop(parts)
}

// onLost drops partitions that are no longer ours without committing: the
// group moved on and a commit would fail.
func (c *kafkaConsumer) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	c.logger.Info("Kafka partitions lost", watermill.LogFields{"topic": c.topic, "partitions": lost[c.topic]})
	c.drop(lost[c.topic])
}

func (c *kafkaConsumer) inFlightOf(parts []int32) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, p := range parts {
		if w := c.parts[p]; w != nil {
			n += w.inFlight
		}
	}
	return n
}

// drop forgets partitions: records not in flight are released now, those
// in flight when they land.
func (c *kafkaConsumer) drop(parts []int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range parts {
		w := c.parts[p]
		if w == nil {
			continue
		}
		w.revoked = true
		for _, r := range w.unfinished() {
			c.release(r)
		}
		delete(c.parts, p)
	}
}

// close waits (bounded by wait) for the records in flight, commits what
// finished, and leaves the group.
func (c *kafkaConsumer) close(wait time.Duration) {
	c.stop()
	<-c.stopped
	c.mu.Lock()
	idle := c.idle
	c.mu.Unlock()
	if idle != nil {
		select {
		case <-idle:
		case <-time.After(wait):
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.commitFinished(ctx); err != nil {
		c.logger.Error("Kafka commit at close failed; the last finished records may run again", err,
			watermill.LogFields{"topic": c.topic})
	}
	close(c.abandon)
	c.cancelMsgCtx()
	// Leaving lets the group hand our partitions on at once instead of
	// after the session timeout; bounded, for a cluster that is down.
	_ = c.client.LeaveGroupContext(ctx)
	c.client.CloseAllowingRebalance()
}

// assigned is the number of partitions this consumer owns.
func (c *kafkaConsumer) assigned() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, p := range c.parts {
		if !p.draining && !p.revoked {
			n++
		}
	}
	return n
}
