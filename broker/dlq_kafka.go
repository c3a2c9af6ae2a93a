package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
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

// dlqRange is the records of one partition of a poison topic still to
// replay: offsets [from, to).
type dlqRange struct {
	partition int32
	from, to  int64
}

// ListPoison implements DeadLetters. A Kafka log cannot delete a record, so
// the messages waiting are those after DLQReplayGroup's committed offset
// (every record while the group committed none), by partition, then offset.
// It reads with a consumer of its own that joins no group: listing changes
// nothing.
func (k *Kafka) ListPoison(ctx context.Context, topic string, limit int) ([]PoisonMessage, int, error) {
	ranges, err := k.dlqPending(topic)
	if err != nil {
		return nil, 0, err
	}
	waiting := 0
	for _, r := range ranges {
		waiting += int(r.to - r.from)
	}
	consumer, err := k.dlqConsumer()
	if err != nil {
		return nil, waiting, err
	}
	defer consumer.Close()
	var out []PoisonMessage
	for _, r := range ranges {
		err := k.dlqRead(ctx, consumer, topic, r, func(pm PoisonMessage, _ int64) (bool, error) {
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
	ranges, err := k.dlqPending(topic)
	if err != nil {
		return nil, err
	}
	consumer, err := k.dlqConsumer()
	if err != nil {
		return nil, err
	}
	defer consumer.Close()
	pub := k.Publisher()
	var replayed []PoisonMessage
	for _, r := range ranges {
		var declined []*message.Message // since the last commit, in order
		err := k.dlqRead(ctx, consumer, topic, r, func(pm PoisonMessage, offset int64) (bool, error) {
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
				if err := k.commitReplayed(topic, r.partition, offset); err != nil {
					return false, fmt.Errorf("moved %d declined poison messages of %s but could not mark the originals: %w",
						len(declined), topic, err)
				}
				declined = declined[:0]
			}
			if err := pub.Publish(to, ReplayMessage(pm)); err != nil {
				return false, fmt.Errorf("replay %s from %s to %s: %w", pm.Message.UUID, topic, to, err)
			}
			if err := k.commitReplayed(topic, r.partition, offset+1); err != nil {
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

// dlqPending returns, per partition of topic, the records after the replay
// group's committed offset. A topic that does not exist has none.
func (k *Kafka) dlqPending(topic string) ([]dlqRange, error) {
	if err := k.client.RefreshMetadata(topic); err != nil {
		if errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
			return nil, nil
		}
		return nil, fmt.Errorf("kafka metadata of %s: %w", topic, err)
	}
	parts, err := k.client.Partitions(topic)
	if err != nil {
		return nil, fmt.Errorf("kafka partitions of %s: %w", topic, err)
	}
	committed, err := k.admin.ListConsumerGroupOffsets(k.DLQReplayGroup(), map[string][]int32{topic: parts})
	if errors.Is(err, sarama.ErrGroupIDNotFound) {
		// Kafka answers -1 offsets for a group that never committed; some
		// brokers (kfake) answer this instead.
		committed, err = &sarama.OffsetFetchResponse{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kafka offsets of group %s on %s: %w", k.DLQReplayGroup(), topic, err)
	}
	var out []dlqRange
	for _, p := range parts {
		oldest, err := k.client.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			return nil, fmt.Errorf("kafka oldest offset of %s/%d: %w", topic, p, err)
		}
		end, err := k.client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return nil, fmt.Errorf("kafka newest offset of %s/%d: %w", topic, p, err)
		}
		from := oldest
		if b := committed.GetBlock(topic, p); b != nil && b.Offset > from {
			// A committed offset below the oldest means retention deleted
			// records nobody replayed; start at what is left.
			from = b.Offset
		}
		if from < end {
			out = append(out, dlqRange{partition: p, from: from, to: end})
		}
	}
	return out, nil
}

func (k *Kafka) dlqConsumer() (sarama.Consumer, error) {
	cc := *k.consumerCfg
	cc.Consumer.Return.Errors = true
	c, err := sarama.NewConsumer(k.brokers, &cc)
	if err != nil {
		return nil, fmt.Errorf("kafka consumer for poison topics: %w", err)
	}
	return c, nil
}

// dlqRead calls fn with every record of r in order until fn returns false
// or an error.
func (k *Kafka) dlqRead(ctx context.Context, consumer sarama.Consumer, topic string, r dlqRange,
	fn func(pm PoisonMessage, offset int64) (bool, error)) error {
	pc, err := consumer.ConsumePartition(topic, r.partition, r.from)
	if err != nil {
		return fmt.Errorf("read %s/%d from offset %d: %w", topic, r.partition, r.from, err)
	}
	defer pc.Close()
	stall := time.NewTimer(kafkaDLQStall)
	defer stall.Stop()
	for {
		select {
		case rec := <-pc.Messages():
			msg, _ := kafkaMarshaler{}.Unmarshal(rec) // never fails
			pm := PoisonMessage{
				Topic:    topic,
				Position: strconv.Itoa(int(rec.Partition)) + "/" + strconv.FormatInt(rec.Offset, 10),
				Message:  msg,
			}
			more, err := fn(pm, rec.Offset)
			if err != nil || !more || rec.Offset+1 >= r.to {
				return err
			}
			stall.Reset(kafkaDLQStall)
		case cerr := <-pc.Errors():
			return fmt.Errorf("read %s/%d: %w", topic, r.partition, cerr)
		case <-stall.C:
			return fmt.Errorf("read %s/%d: no record within %s while offsets up to %d exist", topic, r.partition, kafkaDLQStall, r.to-1)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// commitReplayed commits next as the replay group's offset of
// topic/partition, as a consumer outside any group generation does.
func (k *Kafka) commitReplayed(topic string, partition int32, next int64) error {
	group := k.DLQReplayGroup()
	var err error
	for attempt := range 3 {
		if attempt > 0 {
			_ = k.client.RefreshCoordinator(group)
			time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
		}
		var coord *sarama.Broker
		if coord, err = k.client.Coordinator(group); err != nil {
			continue
		}
		req := &sarama.OffsetCommitRequest{
			Version:                 2,
			ConsumerGroup:           group,
			ConsumerGroupGeneration: sarama.GroupGenerationUndefined,
			RetentionTime:           -1,
		}
		req.AddBlock(topic, partition, next, 0, "")
		var resp *sarama.OffsetCommitResponse
		if resp, err = coord.CommitOffset(req); err != nil {
			continue
		}
		if kerr := resp.Errors[topic][partition]; kerr != sarama.ErrNoError {
			err = kerr
			continue
		}
		return nil
	}
	return fmt.Errorf("commit offset %d of %s/%d for group %s: %w", next, topic, partition, group, err)
}
