// Package handlers holds the two Watermill handler funcs of the pipeline:
// the trigger (event → tasks) and the executor (task → result).
package handlers

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	wmw "github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/history"
	"github.com/eventpipe/eventpipe/metrics"
	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/task"
	"github.com/eventpipe/eventpipe/tracing"
)

// Matcher turns an event into the tasks its rules make, within the rules'
// evaluation budget. *rules.Engine is one.
type Matcher interface {
	Evaluate(ctx context.Context, ev *event.Event, opts rules.Evaluation) ([]task.Task, error)
}

// CrashMarks keeps evidence that an event was being evaluated when the
// process stopped. *crashmark.Dir is one.
type CrashMarks interface {
	rules.CrashGuard
	// Crashed reports whether eventID was being evaluated when a previous
	// process stopped, and clears that evidence.
	Crashed(eventID string) bool
}

// Trigger turns events into tasks on the tasks topic.
type Trigger struct {
	Parser event.Parser
	Rules  Matcher
	// Crashes, when set, marks events with expensive conditions while they
	// are evaluated and poisons one whose evaluation a previous process
	// never finished, so no event can take the process down twice.
	Crashes    CrashMarks
	Publisher  message.Publisher
	TasksTopic string
	Metrics    *metrics.Metrics
	Logger     *slog.Logger
	// History records what each event did; nil records nothing.
	History EventHistory
}

// EventHistory records what the trigger did with an event, for the event's
// timeline; *history.Recorder is one. RecordEvent must never block.
type EventHistory interface {
	RecordEvent(o history.EventOutcome)
}

// Handle decodes the event, matches it against the current rule set and
// publishes every task in one Publish call. It returns only after the tasks
// are published, so the router acks the event only then (at-least-once): a
// redelivered event yields the same task ids, which the executor de-duplicates.
//
// A malformed event is a permanent error (poisoned at once, no retry). When
// some rules fail for this event (template or run-time condition error) the
// tasks of the other rules are still published, then the permanent error
// poisons the event with every failing rule named; a replay after the fix
// re-makes the published tasks with the same ids, which are de-duplicated.
// A publish failure is transient: the event is retried, then redelivered.
func (t *Trigger) Handle(msg *message.Message) error {
	ev, err := t.Parser.Parse(msg.Payload)
	if err != nil {
		return fmt.Errorf("decode event %s: %w", msg.UUID, err)
	}
	corr := ev.TraceID()
	if corr == "" {
		corr = ev.MessageID
	}
	if err := t.handle(msg, ev, corr); err != nil {
		// So the poison and retry log lines of this message name it. Only
		// on failure: setting metadata costs an allocation per event.
		if wmw.MessageCorrelationID(msg) == "" {
			wmw.SetCorrelationID(corr, msg)
		}
		return err
	}
	return nil
}

// handle is Handle once the event is parsed.
func (t *Trigger) handle(msg *message.Message, ev *event.Event, corr string) error {
	opts := rules.Evaluation{Size: len(msg.Payload)}
	if t.Crashes != nil {
		if t.Crashes.Crashed(ev.MessageID) {
			return permanent.Wrap(&rules.BudgetError{EventID: ev.MessageID, Reason: "the process stopped (crash or kill) " +
				"while evaluating this event's conditions; it is poisoned so it cannot stop the process again"})
		}
		opts.Guard = t.Crashes
	}
	tasks, matchErr := t.Rules.Evaluate(msg.Context(), ev, opts)
	if len(tasks) > 0 {
		msgs := make([]*message.Message, len(tasks))
		for i := range tasks {
			m, err := taskMessage(&tasks[i], corr)
			if err != nil {
				return err
			}
			tracing.Inject(msg.Context(), m) // the task continues the event's trace
			msgs[i] = m
		}
		if err := t.Publisher.Publish(t.TasksTopic, msgs...); err != nil {
			return fmt.Errorf("publish %d tasks of event %s to %s: %w", len(msgs), ev.MessageID, t.TasksTopic, err)
		}
		for i := range tasks {
			t.Metrics.TaskTriggered(tasks[i].RuleID, tasks[i].TaskType)
		}
	}
	if t.History != nil {
		// After the publish: an event whose tasks could not be published is
		// retried, and recorded when it gets through.
		t.History.RecordEvent(history.EventOutcome{Event: ev, Raw: msg.Payload, Tasks: tasks, Err: matchErr, At: time.Now()})
	}
	if t.Logger.Enabled(msg.Context(), slog.LevelDebug) {
		t.Logger.DebugContext(msg.Context(), "event matched",
			"correlation_id", corr, "event_id", ev.MessageID, "event_type", ev.EventType, "tasks", len(tasks))
	}
	if matchErr != nil {
		return permanent.Wrap(fmt.Errorf("event %s: %w", ev.MessageID, matchErr))
	}
	return nil
}

// taskMessage encodes a task as a message whose UUID is the task id.
func taskMessage(t *task.Task, correlationID string) (*message.Message, error) {
	payload, err := json.Marshal(t)
	if err != nil {
		// Parameters come from decoded JSON, so this is a bug, not bad input.
		return nil, permanent.Wrap(fmt.Errorf("encode task %s of rule %s: %w", t.TaskID, t.RuleID, err))
	}
	m := message.NewMessage(t.TaskID, payload)
	m.Metadata.Set(task.MetaTaskID, t.TaskID)
	m.Metadata.Set(task.MetaRuleID, t.RuleID)
	m.Metadata.Set(task.MetaTaskType, t.TaskType)
	m.Metadata.Set(task.MetaPriority, t.Priority)
	m.Metadata.Set(task.MetaPartitionKey, partitionKey(t))
	wmw.SetCorrelationID(correlationID, m)
	return m, nil
}

// maxKeyLen bounds a partition key, which travels as a message header (an
// AMQP header frame cannot be split) and as the Kafka record key.
const maxKeyLen = 255

// partitionKey returns the key of t's message: the rule's rendered partition
// key, default the event id. A longer key than maxKeyLen (it is rendered from
// event content) is replaced by its SHA-256, which keeps one key one key.
func partitionKey(t *task.Task) string {
	key := cmp.Or(t.PartitionKey, t.EventID)
	if len(key) > maxKeyLen {
		sum := sha256.Sum256([]byte(key))
		key = "sha256:" + hex.EncodeToString(sum[:])
	}
	return key
}

// errNoTaskID is returned for a task message that names no task id.
var errNoTaskID = errors.New("task has no taskId")
