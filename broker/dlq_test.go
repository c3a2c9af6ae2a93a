package broker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/task"
)

// The AMQP DeadLetters implementation needs a live RabbitMQ: faults/
// exercises it through `eventpipe dlq` (TestDLQReplay, TestPoison).

// poisoned returns a message as the poison middleware leaves it.
func poisoned(id, origin, kind, reason string) *message.Message {
	m := message.NewMessage(id, []byte(`{"id":"`+id+`"}`))
	m.Metadata.Set(task.MetaPartitionKey, "key-"+id)
	m.Metadata.Set("event_type", "order.created")
	m.Metadata.Set(MetaTopicPoisoned, origin)
	m.Metadata.Set(MetaHandlerPoisoned, "trigger")
	m.Metadata.Set(MetaReasonKind, kind)
	m.Metadata.Set(MetaReasonPoisoned, reason)
	return m
}

func uuids(pms []PoisonMessage) []string {
	out := make([]string, len(pms))
	for i, pm := range pms {
		out[i] = pm.Message.UUID
	}
	return out
}

func TestReplayMessage_drops_only_the_poison_metadata(t *testing.T) {
	t.Parallel()
	pm := PoisonMessage{Topic: "t.dlq", Position: "0/3", Message: poisoned("m1", "t", "permanent", "bad")}
	out := ReplayMessage(pm)
	assert.Equal(t, "m1", out.UUID)
	assert.Equal(t, pm.Message.Payload, out.Payload)
	assert.Equal(t, message.Metadata{task.MetaPartitionKey: "key-m1", "event_type": "order.created"}, out.Metadata)
	assert.Equal(t, "bad", pm.Message.Metadata.Get(MetaReasonPoisoned), "the poison message itself is unchanged")
}

func TestKafkaDLQ_list_leaves_messages_in_place_and_a_missing_topic_is_empty(t *testing.T) {
	t.Parallel()
	k, topics := newTestKafka(t, newKfake(t), nil)
	dlq := topics.Poison(topics.Events)
	ctx := t.Context()
	for i := range 3 {
		require.NoError(t, k.Publisher().Publish(dlq, poisoned(fmt.Sprint("m", i), topics.Events, "permanent", "bad")))
	}

	tests := []struct {
		name      string
		topic     string
		limit     int
		wantIDs   []string
		wantTotal int
	}{
		{name: "all", topic: dlq, wantIDs: []string{"m0", "m1", "m2"}, wantTotal: 3},
		{name: "all again: listing consumed nothing", topic: dlq, wantIDs: []string{"m0", "m1", "m2"}, wantTotal: 3},
		{name: "limit counts shown messages, total counts all", topic: dlq, limit: 2, wantIDs: []string{"m0", "m1"}, wantTotal: 3},
		{name: "topic that does not exist holds nothing", topic: "no-such-topic-" + topics.Events, wantTotal: 0},
	}
	for _, tt := range tests {
		msgs, total, err := k.ListPoison(ctx, tt.topic, tt.limit)
		require.NoError(t, err, tt.name)
		assert.Equal(t, tt.wantIDs, nilIfEmpty(uuids(msgs)), tt.name)
		assert.Equal(t, tt.wantTotal, total, tt.name)
	}
	msgs, _, err := k.ListPoison(ctx, dlq, 1)
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	assert.Equal(t, "0/0", msgs[0].Position)
	assert.Equal(t, topics.Events, msgs[0].Origin())
	assert.Equal(t, "permanent", msgs[0].ReasonKind())
	assert.Equal(t, "trigger", msgs[0].Handler())
	assert.Equal(t, "bad", msgs[0].Reason())
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func TestKafkaDLQ_replay_publishes_to_origin_and_marks_past_the_replay_group_offset(t *testing.T) {
	t.Parallel()
	k, topics := newTestKafka(t, newKfake(t), nil)
	dlq := topics.Poison(topics.Events)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// a: declined, then b: replayed, then c: declined, d: replayed, e: declined.
	for _, m := range []*message.Message{
		poisoned("a", topics.Events, "permanent", "invalid JSON"),
		poisoned("b", topics.Events, "permanent", "template error"),
		poisoned("c", topics.Events, "permanent", "invalid JSON"),
		poisoned("d", topics.Events, "retries_exhausted", "template error"),
		poisoned("e", topics.Events, "permanent", "invalid JSON"),
	} {
		require.NoError(t, k.Publisher().Publish(dlq, m))
	}
	onlyTemplate := func(pm PoisonMessage) (string, bool) {
		return pm.Origin(), pm.Reason() == "template error"
	}

	replayed, err := k.ReplayPoison(ctx, dlq, onlyTemplate)
	require.NoError(t, err)
	assert.Equal(t, []string{"b", "d"}, uuids(replayed))

	// The replayed messages arrive on the origin (in any order: their keys
	// put them on different partitions), without poison metadata.
	sub, err := k.Subscriber(topics.Events)
	require.NoError(t, err)
	ch, err := sub.Subscribe(ctx, topics.Events)
	require.NoError(t, err)
	var arrived []string
	for range 2 {
		select {
		case m := <-ch:
			arrived = append(arrived, m.UUID)
			assert.Equal(t, "key-"+m.UUID, m.Metadata.Get(task.MetaPartitionKey))
			for _, key := range PoisonMetadataKeys {
				assert.Empty(t, m.Metadata.Get(key), key)
			}
			m.Ack()
		case <-ctx.Done():
			t.Fatalf("replayed messages not on %s, got %v", topics.Events, arrived)
		}
	}
	assert.ElementsMatch(t, []string{"b", "d"}, arrived)

	// The declined ones still wait: a and c moved behind the replayed
	// offset (to the end), e stayed where it was.
	msgs, total, err := k.ListPoison(ctx, dlq, 0)
	require.NoError(t, err)
	assert.Equal(t, []string{"e", "a", "c"}, uuids(msgs))
	assert.Equal(t, 3, total)
	assert.Equal(t, "invalid JSON", msgs[1].Reason(), "a moved copy keeps its poison metadata")

	again, err := k.ReplayPoison(ctx, dlq, onlyTemplate)
	require.NoError(t, err)
	assert.Empty(t, again, "replayed messages are not replayed twice")

	rest, err := k.ReplayPoison(ctx, dlq, func(pm PoisonMessage) (string, bool) { return pm.Origin(), true })
	require.NoError(t, err)
	assert.Equal(t, []string{"e", "a", "c"}, uuids(rest))
	msgs, total, err = k.ListPoison(ctx, dlq, 0)
	require.NoError(t, err)
	assert.Empty(t, msgs)
	assert.Zero(t, total)
}
