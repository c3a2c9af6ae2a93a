package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// kafkaDLQStall bounds the wait for the next record of a range known to
// exist: a partition that stops answering fails the command instead of
// hanging it.
const kafkaDLQStall = 15 * time.Second

var _ DeadLetters = (*Kafka)(nil)

// DLQReplayGroup returns the consumer group whose committed offsets mark how
// far each poison topic was replayed: "<consumer_group>-dlq-replay"
// (eventpipe-dlq-replay by default). It never joins the group; it only
// commits offsets for it.
func (k *Kafka) DLQReplayGroup() string { return k.cfg.ConsumerGroup + "-dlq-replay" }

// ListPoison implements DeadLetters. A Kafka log cannot delete a record, so
// the messages waiting are those after DLQReplayGroup's committed offset
// (every record while the group committed none), by partition, then offset.
// It reads with a consumer of its own that joins no group: listing changes
// nothing.
func (k *Kafka) ListPoison(ctx context.Context, topic string, limit int) ([]PoisonMessage, int, error) {
	ranges, err := k.pending(ctx, topic, k.DLQReplayGroup())
	if err != nil {
		return nil, 0, err
	}
	waiting := 0
	for _, r := range ranges {
		waiting += int(r.to - r.from)
	}
	var out []PoisonMessage
	for _, r := range ranges {
		err := k.dlqRead(ctx, topic, r, func(pm PoisonMessage, _ int64) (bool, error) {
			out = append(out, pm)
			return limit <= 0 || len(out) < limit, nil
		})
		if err != nil {
			return out, waiting, err
		}
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	return out, waiting, nil
}

// ReplayPoison implements DeadLetters. A replayed record is published to
// its origin, then DLQReplayGroup's offset is committed past it, so it is
// neither listed nor replayed again. A record route declines that sits
// before one it accepts cannot stay where it is (the offset must pass it):
// it is appended again to the end of the poison topic, with its UUID,
// payload and poison metadata, and is listed from there. Declined records
// after the last accepted one of a partition are left in place.
func (k *Kafka) ReplayPoison(ctx context.Context, topic string, route func(PoisonMessage) (string, bool)) ([]PoisonMessage, error) {
	ranges, err := k.pending(ctx, topic, k.DLQReplayGroup())
	if err != nil {
		return nil, err
	}
	pub := k.Publisher()
	var replayed []PoisonMessage
	for _, r := range ranges {
		var declined []*message.Message // since the last commit, in order
		err := k.dlqRead(ctx, topic, r, func(pm PoisonMessage, offset int64) (bool, error) {
			to, ok := route(pm)
			if !ok {
				declined = append(declined, pm.Message)
				return true, nil
			}
			if len(declined) > 0 {
				if err := pub.Publish(topic, declined...); err != nil {
					return false, fmt.Errorf("move %d declined poison messages to the end of %s: %w", len(declined), topic, err)
				}
				// Commit past the originals at once: if the replay below
				// fails, they must not be listed twice.
				if err := k.commitReplayed(ctx, topic, r.partition, offset); err != nil {
					return false, fmt.Errorf("moved %d declined poison messages of %s but could not mark the originals: %w",
						len(declined), topic, err)
				}
				declined = declined[:0]
			}
			if err := pub.Publish(to, ReplayMessage(pm)); err != nil {
				return false, fmt.Errorf("replay %s from %s to %s: %w", pm.Message.UUID, topic, to, err)
			}
			if err := k.commitReplayed(ctx, topic, r.partition, offset+1); err != nil {
				return false, fmt.Errorf("replayed %s to %s but could not mark it replayed (it will be replayed again): %w",
					pm.Message.UUID, to, err)
			}
			replayed = append(replayed, pm)
			return true, nil
		})
		if err != nil {
			return replayed, err
		}
	}
	return replayed, nil
}

// dlqRead calls fn with every record of r in order until fn returns false
// or an error. It reads with a client of its own that joins no group.
func (k *Kafka) dlqRead(ctx context.Context, topic string, r offsetRange,
	fn func(pm PoisonMessage, offset int64) (bool, error)) error {
	if r.from >= r.to {
		return nil
	}
	cl, err := kgo.NewClient(append(k.clientOpts(),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {r.partition: kgo.NewOffset().At(r.from)}}))...)
	if err != nil {
		return fmt.Errorf("kafka consumer for poison topic %s: %w", topic, err)
	}
	defer cl.Close()
	for {
		// A partition that stops answering fails the command instead of
		// hanging it.
		pollCtx, cancel := context.WithTimeout(ctx, kafkaDLQStall)
		fetches := cl.PollFetches(pollCtx)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if fetches.NumRecords() == 0 {
			if err := fetches.Err0(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("read %s/%d: %w", topic, r.partition, err)
			}
			return fmt.Errorf("read %s/%d: no record within %s while offsets up to %d exist", topic, r.partition, kafkaDLQStall, r.to-1)
		}
		for _, rec := range fetches.Records() {
			pm := PoisonMessage{
				Topic:    topic,
				Position: strconv.Itoa(int(rec.Partition)) + "/" + strconv.FormatInt(rec.Offset, 10),
				Message:  unmarshalRecord(rec),
			}
			more, err := fn(pm, rec.Offset)
			if err != nil || !more || rec.Offset+1 >= r.to {
				return err
			}
		}
	}
}

// commitReplayed commits next as the replay group's offset of
// topic/partition, as a consumer outside any group generation does.
func (k *Kafka) commitReplayed(ctx context.Context, topic string, partition int32, next int64) error {
	group := k.DLQReplayGroup()
	var offsets kadm.Offsets
	offsets.Add(kadm.Offset{Topic: topic, Partition: partition, At: next, LeaderEpoch: -1})
	var err error
	for attempt := range 3 {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
		}
		var resp kadm.OffsetResponses
		if resp, err = k.admin.CommitOffsets(ctx, group, offsets); err == nil {
			if err = resp.Error(); err == nil {
				return nil
			}
		}
	}
	return fmt.Errorf("commit offset %d of %s/%d for group %s: %w", next, topic, partition, group, err)
}
