package handlers_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	wmw "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/handlers"
	"github.com/eventpipe/eventpipe/middleware"
	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/task"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// recorder is a publisher that keeps what it was given, or fails.
type recorder struct {
	fail error
	msgs map[string][]*message.Message
}

func (r *recorder) Publish(topic string, msgs ...*message.Message) error {
	if r.fail != nil {
		return r.fail
	}
	if r.msgs == nil {
		r.msgs = map[string][]*message.Message{}
	}
	r.msgs[topic] = append(r.msgs[topic], msgs...)
	return nil
}

func (r *recorder) Close() error { return nil }

type matcherFunc func(*event.Event) ([]task.Task, error)

func (f matcherFunc) Evaluate(_ context.Context, ev *event.Event, _ rules.Evaluation) ([]task.Task, error) {
	return f(ev)
}

const goodEvent = `{"messageId":"e1","eventType":"order.created","payload":{"orderId":"o1"},"metadata":{"traceId":"tr-1"}}`

func TestTrigger_publishes_every_task_with_key_priority_and_correlation(t *testing.T) {
	t.Parallel()
	longKey := strings.Repeat("k", 256)
	pub := &recorder{}
	tr := &handlers.Trigger{Rules: matcherFunc(func(ev *event.Event) ([]task.Task, error) {
		return []task.Task{
			{TaskID: task.ID(ev.MessageID, "a"), RuleID: "a", TaskType: "log", Priority: "HIGH", EventID: ev.MessageID},
			{TaskID: task.ID(ev.MessageID, "b"), RuleID: "b", TaskType: "log", Priority: "LOW", EventID: ev.MessageID, PartitionKey: "cust-1"},
			{TaskID: task.ID(ev.MessageID, "c"), RuleID: "c", TaskType: "log", EventID: ev.MessageID, PartitionKey: longKey},
		}, nil
	}), Publisher: pub, TasksTopic: "tasks", Logger: quiet}

	require.NoError(t, tr.Handle(message.NewMessage("m", []byte(goodEvent))))
	msgs := pub.msgs["tasks"]
	require.Len(t, msgs, 3)
	assert.Equal(t, task.ID("e1", "a"), msgs[0].UUID)
	assert.Equal(t, "e1", msgs[0].Metadata.Get(task.MetaPartitionKey), "default key is the event id")
	assert.Equal(t, "cust-1", msgs[1].Metadata.Get(task.MetaPartitionKey))
	sum := sha256.Sum256([]byte(longKey))
	assert.Equal(t, "sha256:"+hex.EncodeToString(sum[:]), msgs[2].Metadata.Get(task.MetaPartitionKey),
		"a key too long for a header is replaced by its hash")
	assert.Equal(t, "HIGH", msgs[0].Metadata.Get(task.MetaPriority))
	assert.Equal(t, "tr-1", wmw.MessageCorrelationID(msgs[1]))
	var decoded task.Task
	require.NoError(t, json.Unmarshal(msgs[1].Payload, &decoded))
	assert.Equal(t, "b", decoded.RuleID)
}

func TestTrigger_errors(t *testing.T) {
	t.Parallel()
	oneTask := []task.Task{{TaskID: "t1", RuleID: "ok"}}
	tests := []struct {
		name          string
		payload       string
		match         matcherFunc
		publishErr    error
		wantPermanent bool
		wantPublished int
	}{
		{name: "malformed_event_is_permanent", payload: `{"eventType":`, wantPermanent: true},
		{name: "rule_failure_publishes_other_tasks_then_fails_permanently", payload: goodEvent,
			match: func(*event.Event) ([]task.Task, error) {
				return oneTask, errors.New(`rule "bad": missing ${payload.x}`)
			}, wantPermanent: true, wantPublished: 1},
		{name: "publish_failure_is_transient", payload: goodEvent,
			match:      func(*event.Event) ([]task.Task, error) { return oneTask, nil },
			publishErr: errors.New("broker down"), wantPermanent: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pub := &recorder{fail: tt.publishErr}
			tr := &handlers.Trigger{Rules: tt.match, Publisher: pub, TasksTopic: "tasks", Logger: quiet}
			err := tr.Handle(message.NewMessage("m", []byte(tt.payload)))
			require.Error(t, err)
			assert.Equal(t, tt.wantPermanent, permanent.Is(err), err)
			assert.Len(t, pub.msgs["tasks"], tt.wantPublished)
		})
	}
}

type registry map[string]executor.Executor

func (r registry) Get(name string) (executor.Executor, error) {
	if e, ok := r[name]; ok {
		return e, nil
	}
	return nil, permanent.Wrap(errors.New("unknown executor " + name))
}

func taskMsg(t *testing.T, tk task.Task) *message.Message {
	t.Helper()
	b, err := json.Marshal(tk)
	require.NoError(t, err)
	return message.NewMessage(tk.TaskID, b)
}

func TestExecutor_results(t *testing.T) {
	t.Parallel()
	transient := errors.New("try later")
	tests := []struct {
		name       string
		taskType   string
		exec       executor.Func
		wantErr    bool
		wantResult task.Status // "" = no result published
	}{
		{name: "success_publishes_succeeded", taskType: "x",
			exec: func(context.Context, *task.Task) ([]byte, error) { return []byte("out"), nil }, wantResult: task.StatusSucceeded},
		// Outside the middleware chain every attempt is the final one.
		{name: "final_transient_failure_publishes_failed", taskType: "x",
			exec: func(context.Context, *task.Task) ([]byte, error) { return nil, transient }, wantErr: true, wantResult: task.StatusFailed},
		{name: "unknown_type_publishes_failed", taskType: "nope", wantErr: true, wantResult: task.StatusFailed},
		{name: "cancellation_publishes_nothing", taskType: "x",
			exec: func(context.Context, *task.Task) ([]byte, error) { return nil, context.Canceled }, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pub := &recorder{}
			h := &handlers.Executor{Executors: registry{"x": tt.exec}, Publisher: pub, ResultsTopic: "results", Logger: quiet}
			err := h.Handle(taskMsg(t, task.Task{TaskID: "t1", TaskType: tt.taskType, RuleID: "r"}))
			assert.Equal(t, tt.wantErr, err != nil, err)
			if tt.wantResult == "" {
				assert.Empty(t, pub.msgs["results"])
				return
			}
			require.Len(t, pub.msgs["results"], 1)
			var res task.Result
			require.NoError(t, json.Unmarshal(pub.msgs["results"][0].Payload, &res))
			assert.Equal(t, tt.wantResult, res.Status)
			assert.Equal(t, "t1", res.TaskID)
			assert.Equal(t, 1, res.Attempts)
		})
	}
}

func TestExecutor_rejects_undecodable_task_permanently(t *testing.T) {
	t.Parallel()
	h := &handlers.Executor{Executors: registry{}, Publisher: &recorder{}, ResultsTopic: "results", Logger: quiet}
	for _, payload := range []string{`not json`, `{"taskType":"x"}`} {
		err := h.Handle(message.NewMessage("m", []byte(payload)))
		require.Error(t, err)
		assert.True(t, permanent.Is(err), payload)
	}
}

func TestExecutor_result_output_is_bounded(t *testing.T) {
	t.Parallel()
	pub := &recorder{}
	big := make([]byte, handlers.MaxResultOutput*2)
	h := &handlers.Executor{Executors: registry{"x": executor.Func(func(context.Context, *task.Task) ([]byte, error) {
		return big, nil
	})}, Publisher: pub, ResultsTopic: "results", Logger: quiet}
	require.NoError(t, h.Handle(taskMsg(t, task.Task{TaskID: "t1", TaskType: "x"})))
	var res task.Result
	require.NoError(t, json.Unmarshal(pub.msgs["results"][0].Payload, &res))
	assert.Less(t, len(res.Output), handlers.MaxResultOutput+64)
	assert.Contains(t, res.Output, "truncated")
}

// flakyPublisher fails its first n publishes.
type flakyPublisher struct {
	recorder
	failures int
}

func (p *flakyPublisher) Publish(topic string, msgs ...*message.Message) error {
	if p.failures > 0 {
		p.failures--
		return errors.New("broker unavailable")
	}
	return p.recorder.Publish(topic, msgs...)
}

// Every attempt of the first delivery fails to publish the result and the
// task is poisoned; the redelivery (the poison publish failed, or a replay
// from the poison topic) publishes the kept result instead of running it.
func TestExecutor_result_unpublished_after_the_last_attempt_is_not_run_again(t *testing.T) {
	t.Parallel()
	runs := 0
	pub := &flakyPublisher{failures: 4}
	h := &handlers.Executor{Executors: registry{"x": executor.Func(func(context.Context, *task.Task) ([]byte, error) {
		runs++
		return []byte("side effect done"), nil
	})}, Publisher: pub, ResultsTopic: "results", Logger: quiet}
	poison := &recorder{}
	chain, err := middleware.Chain(middleware.ChainConfig{HandlerName: "executor", PoisonPublisher: poison, PoisonTopic: "dlq",
		Retry: config.Retry{MaxRetries: 3, InitialInterval: time.Millisecond, MaxInterval: time.Millisecond, Multiplier: 1}})
	require.NoError(t, err)
	handle := middleware.Apply(func(msg *message.Message) ([]*message.Message, error) { return nil, h.Handle(msg) }, chain)

	_, err = handle(taskMsg(t, task.Task{TaskID: "t1", TaskType: "x"}))
	require.NoError(t, err, "poisoned")
	require.Len(t, poison.msgs["dlq"], 1)
	assert.Empty(t, pub.msgs["results"])

	_, err = handle(taskMsg(t, task.Task{TaskID: "t1", TaskType: "x"}))
	require.NoError(t, err)
	assert.Equal(t, 1, runs, "the redelivery only published the result")
	require.Len(t, pub.msgs["results"], 1)
}

func TestExecutor_result_publish_failure_does_not_run_the_task_again(t *testing.T) {
	t.Parallel()
	runs := 0
	pub := &flakyPublisher{failures: 2}
	h := &handlers.Executor{Executors: registry{"x": executor.Func(func(context.Context, *task.Task) ([]byte, error) {
		runs++
		return []byte("side effect done"), nil
	})}, Publisher: pub, ResultsTopic: "results", Logger: quiet}
	chain, err := middleware.Chain(middleware.ChainConfig{HandlerName: "executor", PoisonPublisher: &recorder{}, PoisonTopic: "dlq",
		Retry: config.Retry{MaxRetries: 3, InitialInterval: time.Millisecond, MaxInterval: time.Millisecond, Multiplier: 1}})
	require.NoError(t, err)
	handle := middleware.Apply(func(msg *message.Message) ([]*message.Message, error) { return nil, h.Handle(msg) }, chain)
	// Attempts 1 and 2 cannot publish the result; attempt 3 can.
	_, err = handle(taskMsg(t, task.Task{TaskID: "t1", TaskType: "x"}))
	require.NoError(t, err)
	assert.Equal(t, 1, runs, "the task ran once; later deliveries only published its result")
	require.Len(t, pub.msgs["results"], 1)
	var res task.Result
	require.NoError(t, json.Unmarshal(pub.msgs["results"][0].Payload, &res))
	assert.Equal(t, "side effect done", res.Output)
}
