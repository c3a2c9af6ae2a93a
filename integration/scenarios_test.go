package integration_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/task"
)

// scenario is one end-to-end behaviour every broker must show.
type scenario struct {
	name string
	// only limits the scenario to these brokers ("" = all).
	only string
	run  func(t *testing.T, tgt target)
}

// TestScenarios runs the scenario suite against every broker.
func TestScenarios(t *testing.T) {
	t.Parallel()
	for _, tgt := range targets() {
		t.Run(tgt.name, func(t *testing.T) {
			t.Parallel()
			tgt.provider.require(t)
			for _, sc := range scenarios() {
				if sc.only != "" && sc.only != tgt.name {
					continue
				}
				t.Run(sc.name, func(t *testing.T) {
					t.Parallel()
					sc.run(t, tgt)
				})
			}
		})
	}
}

// waitLong bounds the wait for one result; waitBulk for a 10,000-event
// run, which takes 5-25 s alone but shares two cores with the other tests.
const (
	waitLong = 60 * time.Second
	waitBulk = 2 * time.Minute
)

func scenarios() []scenario {
	return []scenario{
		{name: "event_becomes_task_and_result", run: func(t *testing.T, tgt target) {
			h := newHarness(t, tgt, nil, nil)
			res := h.watch(h.cfg.Topics.Results)
			h.publish(ev("e1", "order.created"))

			got := results(t, res.waitFor(t, 1, waitLong))
			require.Len(t, got, 1)
			assert.Equal(t, task.StatusSucceeded, got[0].Status)
			assert.Equal(t, task.ID("e1", "audit"), got[0].TaskID)
			assert.Equal(t, "audit-e1", got[0].TaskName)
			assert.Equal(t, "trace-e1", got[0].TraceID)
			assert.Equal(t, 1, got[0].Attempts)
			assert.Equal(t, "ok", got[0].Output)
		}},
		{name: "malformed_event_is_poisoned_and_stream_continues", run: func(t *testing.T, tgt target) {
			h := newHarness(t, tgt, nil, nil)
			dlq := h.watch(h.cfg.Topics.Poison(h.cfg.Topics.Events))
			res := h.watch(h.cfg.Topics.Results)
			bad := `{"messageId":"bad-1","eventType":"order.created","payload":[1,2]}`
			h.publish(bad)
			h.publish(ev("good-1", "order.created"))

			poisoned := dlq.waitFor(t, 1, waitLong)
			assert.Equal(t, bad, string(poisoned[0].Payload), "original payload kept")
			assert.Contains(t, poisoned[0].Metadata.Get("reason_poisoned"), "payload")
			assert.Equal(t, h.cfg.Topics.Events, poisoned[0].Metadata.Get("topic_poisoned"))
			got := results(t, res.waitFor(t, 1, waitLong))
			assert.Equal(t, task.ID("good-1", "audit"), got[0].TaskID)
		}},
		{name: "retries_then_succeeds", run: func(t *testing.T, tgt target) {
			var calls atomic.Int32
			flaky := executor.Func(func(context.Context, *task.Task) ([]byte, error) {
				if calls.Add(1) <= 2 {
					return nil, errors.New("temporary glitch")
				}
				return []byte("ok"), nil
			})
			h := newHarness(t, tgt, nil, map[string]executor.Executor{"flaky": flaky})
			res := h.watch(h.cfg.Topics.Results)
			dlq := h.watch(h.cfg.Topics.Poison(h.cfg.Topics.Tasks))
			h.publish(ev("f1", "flaky.test"))

			got := results(t, res.waitFor(t, 1, waitLong))
			assert.Equal(t, task.StatusSucceeded, got[0].Status)
			assert.Equal(t, 3, got[0].Attempts)
			assert.Never(t, func() bool { return len(res.snapshot()) > 1 || len(dlq.snapshot()) > 0 },
				time.Second, 20*time.Millisecond, "one result, nothing poisoned")
			assert.EqualValues(t, 3, calls.Load())
		}},
		{name: "always_failing_task_is_poisoned_with_failed_result", run: func(t *testing.T, tgt target) {
			var calls atomic.Int32
			broken := executor.Func(func(context.Context, *task.Task) ([]byte, error) {
				calls.Add(1)
				return nil, errors.New("downstream is down")
			})
			h := newHarness(t, tgt, func(c *config.Config) { c.Retry.MaxRetries = 2 }, map[string]executor.Executor{"broken": broken})
			res := h.watch(h.cfg.Topics.Results)
			dlq := h.watch(h.cfg.Topics.Poison(h.cfg.Topics.Tasks))
			h.publish(ev("b1", "broken.test"))

			poisoned := dlq.waitFor(t, 1, waitLong)
			assert.Contains(t, poisoned[0].Metadata.Get("reason_poisoned"), "downstream is down")
			assert.Equal(t, task.ID("b1", "broken"), poisoned[0].UUID)
			got := results(t, res.waitFor(t, 1, waitLong))
			assert.Equal(t, task.StatusFailed, got[0].Status)
			assert.Equal(t, 3, got[0].Attempts, "1 attempt + 2 retries")
			assert.EqualValues(t, 3, calls.Load())
		}},
		{name: "unknown_task_type_is_poisoned_at_once", run: func(t *testing.T, tgt target) {
			h := newHarness(t, tgt, nil, nil)
			dlq := h.watch(h.cfg.Topics.Poison(h.cfg.Topics.Tasks))
			res := h.watch(h.cfg.Topics.Results)
			// A task from another producer naming an executor nobody registered.
			publishRaw(t, h, h.cfg.Topics.Tasks, "t-unknown", `{"taskId":"t-unknown","taskType":"nope","ruleId":"r","eventId":"e"}`)

			poisoned := dlq.waitFor(t, 1, waitLong)
			assert.Contains(t, poisoned[0].Metadata.Get("reason_poisoned"), `unknown executor "nope"`)
			got := results(t, res.waitFor(t, 1, waitLong))
			assert.Equal(t, task.StatusFailed, got[0].Status)
			assert.Equal(t, 1, got[0].Attempts, "permanent errors are not retried")
		}},
		{name: "same_message_id_twice_executes_once", run: func(t *testing.T, tgt target) {
			h := newHarness(t, tgt, nil, nil)
			res := h.watch(h.cfg.Topics.Results)
			h.publish(ev("dup-1", "order.created"))
			res.waitFor(t, 1, waitLong)
			h.publish(ev("dup-1", "order.created"), ev("other", "order.created"))

			got := results(t, res.waitFor(t, 2, waitLong))
			assert.Never(t, func() bool { return len(res.snapshot()) > 2 }, time.Second, 20*time.Millisecond)
			distinct, runs := h.rec.executed()
			assert.Equal(t, 2, distinct)
			assert.Equal(t, 2, runs, "dup-1 once, other once")
			assert.ElementsMatch(t, []string{task.ID("dup-1", "audit"), task.ID("other", "audit")},
				[]string{got[0].TaskID, got[1].TaskID})
		}},
		{name: "ten_thousand_events_none_lost", run: func(t *testing.T, tgt target) {
			h := newHarness(t, tgt, raisedConcurrency, nil)
			events, want := orderEvents("bulk", 10_000)
			start := time.Now()
			h.publish(events...)
			h.rec.waitDistinct(t, len(want), waitBulk)
			assert.Empty(t, h.rec.missing(want))
			distinct, runs := h.rec.executed()
			t.Logf("%s: %d events -> %d tasks executed (%d runs) in %s (%.0f events/s)", tgt.name, len(events),
				distinct, runs, time.Since(start).Round(time.Millisecond), float64(len(events))/time.Since(start).Seconds())
		}},
		{name: "each_key_executes_in_publish_order", run: func(t *testing.T, tgt target) {
			// 64 events and 64 tasks in flight (on Kafka over 12 and 6
			// partitions: many keys share a partition); only per-key order
			// holds (Kafka: the record key; RabbitMQ: the partition_key header).
			h := newHarness(t, tgt, func(c *config.Config) { c.Trigger.Concurrency, c.Executor.Concurrency = 64, 64 }, nil)
			const keys, perKey = 40, 50
			events := make([]string, 0, keys*perKey)
			for seq := range perKey {
				for k := range keys {
					events = append(events, seqEvent(fmt.Sprintf("s-%d-%d", k, seq), fmt.Sprintf("key-%d", k), seq))
				}
			}
			// Events are keyed too: their order per key is what the trigger sees.
			publishEvents(t, h.b.Publisher(), h.cfg.Topics.Events, events, func(i int) string { return fmt.Sprintf("key-%d", i%keys) })
			h.rec.waitDistinct(t, len(events), waitLong)

			h.rec.mu.Lock()
			defer h.rec.mu.Unlock()
			for k := range keys {
				got := h.rec.byKey[fmt.Sprintf("key-%d", k)]
				require.Len(t, got, perKey, "key-%d", k)
				for seq := range perKey {
					if !assert.Equal(t, fmt.Sprint(seq), got[seq], "key-%d position %d", k, seq) {
						break
					}
				}
			}
		}},
	}
}

// raisedConcurrency runs several handlers per topic: on AMQP more
// subscriptions (messages in flight) per queue; on Kafka more group
// members over the same partitions.
func raisedConcurrency(c *config.Config) {
	c.Trigger.Concurrency = 8
	c.Executor.Concurrency = 8
}

// publishRaw publishes one message with the given UUID and payload.
func publishRaw(t testing.TB, h *harness, topic, id, payload string) {
	t.Helper()
	require.NoError(t, h.b.Publisher().Publish(topic, message.NewMessage(id, []byte(payload))))
}
