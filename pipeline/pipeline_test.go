package pipeline_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/api"
	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/pipeline"
	"github.com/eventpipe/eventpipe/task"
)

const testRules = `taskTriggerRules:
  - ruleId: "audit"
    eventType: "order.#"
    taskName: "audit-${eventId}"
    taskType: "log"
    parameters: {message: "order ${payload.orderId}"}
  - ruleId: "flaky"
    eventType: "flaky.test"
    taskName: "flaky"
    taskType: "flaky"
  - ruleId: "broken"
    eventType: "broken.test"
    taskName: "broken"
    taskType: "broken"
  - ruleId: "slow"
    eventType: "slow.test"
    taskName: "slow-${eventId}"
    taskType: "slow"
`

// harness runs a pipeline on an embedded broker it shares with the test, so
// the test can watch task-results and the poison topics.
type harness struct {
	t      *testing.T
	p      *pipeline.Pipeline
	broker *broker.Embedded
	cancel context.CancelFunc
	done   chan error
}

// newHarness starts a pipeline with execs registered; the test rules' other
// task types get an executor that succeeds at once.
func newHarness(t *testing.T, mutate func(*config.Config), execs map[string]executor.Executor) *harness {
	t.Helper()
	return newHarnessWith(t, mutate, execs)
}

// newHarnessWith is newHarness with further pipeline options.
func newHarnessWith(t *testing.T, mutate func(*config.Config), execs map[string]executor.Executor, extra ...pipeline.Option) *harness {
	t.Helper()
	dir := t.TempDir()
	rulesFile := filepath.Join(dir, "rules.yaml")
	require.NoError(t, os.WriteFile(rulesFile, []byte(testRules), 0o600))
	cfg := config.Default()
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Rules.File = rulesFile
	cfg.Retry.InitialInterval = time.Millisecond
	cfg.Retry.MaxInterval = 5 * time.Millisecond
	cfg.ShutdownTimeout = 2 * time.Second
	cfg.DataDir = dir
	if mutate != nil {
		mutate(cfg)
	}
	b := broker.NewEmbedded(cfg.Broker.Embedded, watermill.NopLogger{})
	t.Cleanup(func() { _ = b.Close() })
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts := []pipeline.Option{pipeline.WithBroker(b), pipeline.WithLogger(logger)}
	for _, name := range []string{"flaky", "broken", "slow"} {
		e, ok := execs[name]
		if !ok {
			e = executor.Func(func(context.Context, *task.Task) ([]byte, error) { return nil, nil })
		}
		opts = append(opts, pipeline.WithExecutor(name, e))
	}
	p, err := pipeline.New(cfg, append(opts, extra...)...)
	require.NoError(t, err)
	h := &harness{t: t, p: p, broker: b, done: make(chan error, 1)}
	var ctx context.Context
	ctx, h.cancel = context.WithCancel(t.Context())
	go func() { h.done <- p.Run(ctx) }()
	select {
	case <-p.Running():
	case err := <-h.done:
		t.Fatalf("pipeline stopped at start: %v", err)
	}
	t.Cleanup(func() { h.cancel(); <-h.done })
	return h
}

// watch collects every message of topic.
func (h *harness) watch(topic string) *collector {
	sub, err := h.broker.Subscriber(topic)
	require.NoError(h.t, err)
	ch, err := sub.Subscribe(h.t.Context(), topic)
	require.NoError(h.t, err)
	c := &collector{}
	go func() {
		for m := range ch {
			c.add(m)
			m.Ack()
		}
	}()
	return c
}

func (h *harness) publish(events ...string) {
	h.t.Helper()
	in := make([]api.Ingested, len(events))
	for i, e := range events {
		var probe struct {
			MessageID string `json:"messageId"`
		}
		_ = json.Unmarshal([]byte(e), &probe)
		in[i] = api.Ingested{ID: probe.MessageID, Raw: json.RawMessage(e)}
	}
	require.NoError(h.t, h.p.PublishEvents(h.t.Context(), in))
}

type collector struct {
	mu   sync.Mutex
	msgs []*message.Message
}

func (c *collector) add(m *message.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, m)
}

func (c *collector) snapshot() []*message.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*message.Message(nil), c.msgs...)
}

// waitFor waits until n messages arrived and returns them.
func (c *collector) waitFor(t *testing.T, n int) []*message.Message {
	t.Helper()
	require.Eventually(t, func() bool { return len(c.snapshot()) >= n }, 5*time.Second, 5*time.Millisecond,
		"want %d messages", n)
	return c.snapshot()
}

func results(t *testing.T, msgs []*message.Message) []task.Result {
	t.Helper()
	out := make([]task.Result, len(msgs))
	for i, m := range msgs {
		require.NoError(t, json.Unmarshal(m.Payload, &out[i]))
	}
	return out
}

func ev(id, typ string) string {
	return fmt.Sprintf(`{"messageId":%q,"eventType":%q,"payload":{"orderId":"o-1"},"metadata":{"traceId":"trace-%s"}}`, id, typ, id)
}

func TestPipeline_event_becomes_task_and_result(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, nil)
	res := h.watch("task-results")
	h.publish(ev("e1", "order.created"))

	got := results(t, res.waitFor(t, 1))
	require.Len(t, got, 1)
	assert.Equal(t, task.StatusSucceeded, got[0].Status)
	assert.Equal(t, task.ID("e1", "audit"), got[0].TaskID)
	assert.Equal(t, "audit-e1", got[0].TaskName)
	assert.Equal(t, "trace-e1", got[0].TraceID)
	assert.Equal(t, 1, got[0].Attempts)
}

func TestPipeline_malformed_event_is_poisoned_and_stream_continues(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, nil)
	dlq := h.watch("business-events.dlq")
	res := h.watch("task-results")

	h.publish(`{"messageId":"bad-1","payload":[1,2]}`)
	h.publish(ev("good-1", "order.created"))

	poisoned := dlq.waitFor(t, 1)
	assert.Equal(t, `{"messageId":"bad-1","payload":[1,2]}`, string(poisoned[0].Payload), "original payload kept")
	assert.Contains(t, poisoned[0].Metadata.Get("reason_poisoned"), "eventType")
	assert.Equal(t, "business-events", poisoned[0].Metadata.Get("topic_poisoned"))
	got := results(t, res.waitFor(t, 1))
	assert.Equal(t, task.ID("good-1", "audit"), got[0].TaskID)
}

func TestPipeline_retries_then_succeeds(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	flaky := executor.Func(func(context.Context, *task.Task) ([]byte, error) {
		if calls.Add(1) <= 2 {
			return nil, errors.New("temporary glitch")
		}
		return []byte("ok"), nil
	})
	h := newHarness(t, nil, map[string]executor.Executor{"flaky": flaky})
	res := h.watch("task-results")
	dlq := h.watch("schedule-tasks.dlq")
	h.publish(ev("f1", "flaky.test"))

	got := results(t, res.waitFor(t, 1))
	assert.Equal(t, task.StatusSucceeded, got[0].Status)
	assert.Equal(t, 3, got[0].Attempts)
	assert.Equal(t, "ok", got[0].Output)
	assert.Never(t, func() bool { return len(res.snapshot()) > 1 || len(dlq.snapshot()) > 0 },
		200*time.Millisecond, 10*time.Millisecond, "one result, nothing poisoned")
	assert.EqualValues(t, 3, calls.Load())
}

func TestPipeline_always_failing_task_is_poisoned_with_failed_result(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	broken := executor.Func(func(context.Context, *task.Task) ([]byte, error) {
		calls.Add(1)
		return nil, errors.New("downstream is down")
	})
	h := newHarness(t, func(c *config.Config) { c.Retry.MaxRetries = 2 }, map[string]executor.Executor{"broken": broken})
	res := h.watch("task-results")
	dlq := h.watch("schedule-tasks.dlq")
	h.publish(ev("b1", "broken.test"))

	poisoned := dlq.waitFor(t, 1)
	assert.Contains(t, poisoned[0].Metadata.Get("reason_poisoned"), "downstream is down")
	assert.Equal(t, task.ID("b1", "broken"), poisoned[0].UUID)
	got := results(t, res.waitFor(t, 1))
	assert.Equal(t, task.StatusFailed, got[0].Status)
	assert.Equal(t, 3, got[0].Attempts, "1 attempt + 2 retries")
	assert.Contains(t, got[0].Error, "downstream is down")
	assert.EqualValues(t, 3, calls.Load())
}

func TestPipeline_unknown_task_type_is_poisoned_at_once(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, nil)
	dlq := h.watch("schedule-tasks.dlq")
	res := h.watch("task-results")
	// A task from another producer naming an executor nobody registered.
	tk := task.Task{TaskID: "t-unknown", TaskType: "nope", RuleID: "r", EventID: "e"}
	payload, err := json.Marshal(tk)
	require.NoError(t, err)
	require.NoError(t, h.broker.Publisher().Publish("schedule-tasks", message.NewMessage("t-unknown", payload)))

	poisoned := dlq.waitFor(t, 1)
	assert.Contains(t, poisoned[0].Metadata.Get("reason_poisoned"), `unknown executor "nope"`)
	got := results(t, res.waitFor(t, 1))
	assert.Equal(t, task.StatusFailed, got[0].Status)
	assert.Equal(t, 1, got[0].Attempts, "permanent errors are not retried")
}

func TestPipeline_same_message_id_twice_executes_once(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	count := executor.Func(func(context.Context, *task.Task) ([]byte, error) {
		calls.Add(1)
		return nil, nil
	})
	h := newHarness(t, nil, map[string]executor.Executor{"flaky": count})
	res := h.watch("task-results")
	h.publish(ev("dup-1", "flaky.test"))
	res.waitFor(t, 1)
	h.publish(ev("dup-1", "flaky.test"), ev("other", "flaky.test"))

	got := results(t, res.waitFor(t, 2))
	assert.Never(t, func() bool { return len(res.snapshot()) > 2 }, 200*time.Millisecond, 10*time.Millisecond)
	assert.EqualValues(t, 2, calls.Load(), "dup-1 once, other once")
	assert.ElementsMatch(t, []string{task.ID("dup-1", "flaky"), task.ID("other", "flaky")},
		[]string{got[0].TaskID, got[1].TaskID})
}

func TestPipeline_shutdown_drains_in_flight_tasks_without_poisoning(t *testing.T) {
	t.Parallel()
	started := make(chan string, 100)
	var finished, canceled atomic.Int32
	slow := executor.Func(func(ctx context.Context, tk *task.Task) ([]byte, error) {
		started <- tk.TaskID
		select {
		case <-time.After(300 * time.Millisecond):
			finished.Add(1)
			return []byte("done"), nil
		case <-ctx.Done():
			canceled.Add(1)
			return nil, ctx.Err()
		}
	})
	h := newHarness(t, func(c *config.Config) { c.ShutdownTimeout = time.Second }, map[string]executor.Executor{"slow": slow})
	dlqEvents := h.watch("business-events.dlq")
	dlqTasks := h.watch("schedule-tasks.dlq")
	res := h.watch("task-results")
	for i := range 10 {
		h.publish(ev(fmt.Sprintf("s%d", i), "slow.test"))
	}
	<-started

	stopAt := time.Now()
	h.cancel()
	err := <-h.done
	h.done <- err // for the cleanup
	elapsed := time.Since(stopAt)

	require.NoError(t, err)
	assert.Less(t, elapsed, 1500*time.Millisecond, "exits within the shutdown timeout")
	assert.GreaterOrEqual(t, finished.Load(), int32(1), "the running task was allowed to finish")
	assert.Empty(t, dlqEvents.snapshot(), "nothing poisoned")
	assert.Empty(t, dlqTasks.snapshot(), "nothing poisoned")
	// Results travel asynchronously to the watcher; wait for every finished task's.
	got := results(t, res.waitFor(t, int(finished.Load())))
	for _, r := range got {
		assert.Equal(t, task.StatusSucceeded, r.Status, "only finished tasks report results")
	}
	assert.Never(t, func() bool { return len(res.snapshot()) > int(finished.Load()) }, 100*time.Millisecond, 10*time.Millisecond)
}

func TestPipeline_shutdown_aborts_tasks_past_the_drain_deadline(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 1)
	stuck := executor.Func(func(ctx context.Context, _ *task.Task) ([]byte, error) {
		started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	})
	h := newHarness(t, func(c *config.Config) { c.ShutdownTimeout = 500 * time.Millisecond }, map[string]executor.Executor{"slow": stuck})
	dlq := h.watch("schedule-tasks.dlq")
	res := h.watch("task-results")
	h.publish(ev("stuck-1", "slow.test"))
	<-started

	stopAt := time.Now()
	h.cancel()
	err := <-h.done
	h.done <- err
	assert.Less(t, time.Since(stopAt), time.Second)
	assert.Empty(t, dlq.snapshot(), "an aborted task is left for redelivery, not poisoned")
	assert.Empty(t, res.snapshot(), "an aborted task has no result")
}

func TestPipeline_executor_concurrency_runs_tasks_in_parallel(t *testing.T) {
	t.Parallel()
	const n = 3
	var running, peak atomic.Int32
	release := make(chan struct{})
	slow := executor.Func(func(ctx context.Context, _ *task.Task) ([]byte, error) {
		now := running.Add(1)
		defer running.Add(-1)
		for {
			old := peak.Load()
			if now <= old || peak.CompareAndSwap(old, now) {
				break
			}
		}
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return nil, nil
	})
	h := newHarness(t, func(c *config.Config) { c.Executor.Concurrency = n }, map[string]executor.Executor{"slow": slow})
	res := h.watch("task-results")
	for i := range 2 * n {
		h.publish(ev(fmt.Sprintf("p%d", i), "slow.test"))
	}
	require.Eventually(t, func() bool { return running.Load() == n }, 5*time.Second, time.Millisecond,
		"%d tasks should run at once", n)
	close(release)
	res.waitFor(t, 2*n)
	assert.Never(t, func() bool { return len(res.snapshot()) > 2*n }, 100*time.Millisecond, 10*time.Millisecond,
		"each task runs once: the handlers compete, they do not all get every task")
	assert.EqualValues(t, n, peak.Load(), "never more than the configured concurrency")
}

func TestPipeline_exports_queue_backlog_of_the_embedded_broker(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, nil)
	require.Eventually(t, func() bool {
		families, err := h.p.Registry().Gather()
		require.NoError(t, err)
		for _, f := range families {
			if f.GetName() == "queue_backlog" {
				for _, m := range f.GetMetric() {
					for _, l := range m.GetLabel() {
						if l.GetName() == "topic" && l.GetValue() == "schedule-tasks" {
							return true
						}
					}
				}
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond, "queue_backlog{topic=schedule-tasks} exported")
}
