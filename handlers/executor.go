package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	wmw "github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/history"
	"github.com/eventpipe/eventpipe/metrics"
	"github.com/eventpipe/eventpipe/middleware"
	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/task"
	"github.com/eventpipe/eventpipe/tracing"
)

// MaxResultOutput bounds Result.Output; executors bound their own capture too.
const MaxResultOutput = 16 << 10

// Executors finds the executor of a task type. *executor.Registry is one.
type Executors interface {
	Get(name string) (executor.Executor, error)
}

// Executor runs tasks and publishes their results.
type Executor struct {
	Executors    Executors
	Publisher    message.Publisher
	ResultsTopic string
	// Timeout bounds a task that sets no timeout of its own.
	Timeout time.Duration
	// Abort, when it ends, cancels running tasks. Shutdown lets running tasks
	// finish (drain) and ends Abort at the drain deadline; nil never aborts.
	Abort   context.Context
	Metrics *metrics.Metrics
	Logger  *slog.Logger
	// History records each finished attempt; nil records nothing.
	History TaskHistory

	// unpublished holds, by task id, outcomes whose result could not be
	// published yet, so a retry, a redelivery or a replay from the poison
	// topic publishes it instead of running the task a second time. An entry
	// lives until its result is published; at most maxUnpublished are kept.
	unpublished  sync.Map // string → *outcome
	nUnpublished atomic.Int64
}

// TaskHistory records finished task attempts, for the task's history;
// *history.Recorder is one. RecordAttempt must never block.
type TaskHistory interface {
	RecordAttempt(a history.TaskAttempt)
}

// maxUnpublished bounds the outcomes kept while results cannot be published
// (each holds up to MaxResultOutput of output); past it, a redelivered task
// whose result was lost runs again.
const maxUnpublished = 10_000

// outcome is a finished task: its result and the error it ended with.
type outcome struct {
	res task.Result
	err error
}

// Handle runs one task and publishes its result; the router acks the task
// after that. On success it publishes a SUCCEEDED result. On a transient
// failure that will be retried it publishes nothing and returns the error;
// on the final attempt, or a permanent failure (unknown task type, bad
// parameters, HTTP 4xx), it publishes a FAILED result and returns the error
// so the task lands on the poison topic with its reason.
//
// The task runs with a context detached from the message's cancellation:
// Router.Close cancels message contexts at once, and a graceful shutdown
// should let running tasks finish. Abort bounds that drain; a task it cuts
// off returns context.Canceled, which is never poisoned, so the task is
// redelivered.
func (h *Executor) Handle(msg *message.Message) error {
	var t task.Task
	if err := json.Unmarshal(msg.Payload, &t); err != nil {
		return permanent.Wrap(fmt.Errorf("decode task %s: %w", msg.UUID, err))
	}
	if t.TaskID == "" {
		return permanent.Wrap(fmt.Errorf("decode task %s: %w", msg.UUID, errNoTaskID))
	}
	attempt, final := middleware.Attempt(msg.Context())
	if o, ok := h.unpublished.Load(t.TaskID); ok {
		// The task ran; only its result is missing.
		return h.finish(msg, o.(*outcome), final)
	}
	ctx := msg.Context()
	// Built only when a line is logged: Logger.With formats its attributes at once.
	log := func() *slog.Logger {
		return h.Logger.With("correlation_id", wmw.MessageCorrelationID(msg), "task_id", t.TaskID, "rule_id", t.RuleID)
	}

	started := time.Now()
	var output []byte
	typeLabel := t.TaskType
	exec, err := h.Executors.Get(t.TaskType)
	if err != nil {
		typeLabel = "unknown" // keep the label set bounded
	} else {
		output, err = h.run(ctx, exec, &t)
	}
	finished := time.Now()
	if err != nil && isCanceled(err) {
		// Shutdown cut the task off: no result, no poison; it is redelivered.
		if h.Logger.Enabled(ctx, slog.LevelDebug) {
			log().DebugContext(ctx, "task canceled", "attempt", attempt)
		}
		return err
	}
	if err != nil && !final && !permanent.Is(err) {
		if h.History != nil {
			h.History.RecordAttempt(history.TaskAttempt{Result: task.Result{
				TaskID: t.TaskID, TaskName: t.TaskName, TaskType: t.TaskType, RuleID: t.RuleID, EventID: t.EventID,
				TraceID: t.TraceID, Status: task.StatusFailed, Attempts: attempt, StartedAt: started.UTC(),
				FinishedAt: finished.UTC(), DurationMs: finished.Sub(started).Milliseconds(), Error: err.Error()}})
		}
		if h.Logger.Enabled(ctx, slog.LevelDebug) {
			log().DebugContext(ctx, "task failed, will retry", "attempt", attempt, "error", err)
		}
		return err
	}

	res := task.Result{
		TaskID: t.TaskID, TaskName: t.TaskName, TaskType: t.TaskType, RuleID: t.RuleID,
		EventID: t.EventID, TraceID: t.TraceID, Status: task.StatusSucceeded, Attempts: attempt,
		StartedAt: started.UTC(), FinishedAt: finished.UTC(), DurationMs: finished.Sub(started).Milliseconds(),
		Output: truncate(output, MaxResultOutput),
	}
	if err != nil {
		res.Status = task.StatusFailed
		res.Error = err.Error()
		log().WarnContext(ctx, "task failed", "attempt", attempt, "error", err)
	} else if h.Logger.Enabled(ctx, slog.LevelDebug) {
		log().DebugContext(ctx, "task succeeded", "attempt", attempt, "duration_ms", res.DurationMs)
	}
	h.Metrics.TaskExecutedContext(ctx, typeLabel, string(res.Status), finished.Sub(started))
	if h.History != nil {
		h.History.RecordAttempt(history.TaskAttempt{Result: res, Final: true, PoisonKind: history.PoisonKindOf(err)})
	}
	return h.finish(msg, &outcome{res: res, err: err}, final)
}

// finish publishes the outcome's result and returns the task's error. If
// publishing fails the outcome is kept and the publish error returned, so
// the retry publishes again without running the task; on the final attempt
// both errors go to the poison topic, and the outcome is still kept: if
// the poison publish fails too the task is redelivered, and a replay from
// the poison topic also only publishes the result (within this process).
func (h *Executor) finish(msg *message.Message, o *outcome, final bool) error {
	if perr := h.publish(msg, &o.res); perr != nil {
		if _, kept := h.unpublished.Load(o.res.TaskID); !kept && h.nUnpublished.Load() < maxUnpublished {
			h.unpublished.Store(o.res.TaskID, o)
			h.nUnpublished.Add(1)
		}
		if final {
			return errors.Join(perr, o.err)
		}
		return perr
	}
	if _, kept := h.unpublished.LoadAndDelete(o.res.TaskID); kept {
		h.nUnpublished.Add(-1)
	}
	return o.err
}

// run runs the task under its timeout.
func (h *Executor) run(msgCtx context.Context, exec executor.Executor, t *task.Task) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(msgCtx), t.TimeoutDuration(h.Timeout))
	defer cancel()
	if h.Abort != nil {
		stop := context.AfterFunc(h.Abort, cancel)
		defer stop()
	}
	out, err := exec.Execute(ctx, t)
	if err != nil && h.Abort != nil && h.Abort.Err() != nil && ctx.Err() != nil {
		// Aborted by shutdown rather than by the task's own timeout.
		return out, fmt.Errorf("task %s aborted by shutdown: %w", t.TaskID, context.Canceled)
	}
	return out, err
}

func (h *Executor) publish(msg *message.Message, res *task.Result) error {
	payload, err := json.Marshal(res)
	if err != nil {
		return permanent.Wrap(fmt.Errorf("encode result of task %s: %w", res.TaskID, err))
	}
	// The result id is derived from the task id so a re-published result of
	// the same task is recognisable as a duplicate downstream.
	out := message.NewMessage(task.ID(res.TaskID, "result"), payload)
	out.Metadata.Set(task.MetaTaskID, res.TaskID)
	out.Metadata.Set(task.MetaRuleID, res.RuleID)
	out.Metadata.Set(task.MetaPartitionKey, msg.Metadata.Get(task.MetaPartitionKey))
	wmw.SetCorrelationID(wmw.MessageCorrelationID(msg), out)
	tracing.Inject(msg.Context(), out) // the result continues the task's trace
	if err := h.Publisher.Publish(h.ResultsTopic, out); err != nil {
		return fmt.Errorf("publish result of task %s to %s: %w", res.TaskID, h.ResultsTopic, err)
	}
	return nil
}

func isCanceled(err error) bool {
	return errors.Is(err, context.Canceled) && !permanent.Is(err)
}

// truncate keeps at most n bytes of b, cut at a rune boundary, and says how
// much was dropped.
func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(b[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…[truncated %d bytes]", b[:cut], len(b)-cut)
}
