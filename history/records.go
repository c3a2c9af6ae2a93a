// Package history is the lineage store: what happened to each event (the
// rules that matched it or why not, the tasks it made, their attempts and
// results), the rule change history and, on the embedded broker, the poison
// messages. It is fed asynchronously by a Recorder, so the pipeline never
// waits for it, and kept in SQLite (one process) or PostgreSQL (replicas).
package history

import (
	"errors"
	"time"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/task"
)

// ErrNotFound: no event, task or rule version with that id is in the history.
var ErrNotFound = errors.New("not found in history")

// Task statuses in the history: a task is PENDING once made, RETRYING
// after a failed attempt that will be retried, then SUCCEEDED or FAILED
// (task.Status) with its result.
const (
	StatusPending  = "PENDING"
	StatusRetrying = "RETRYING"
)

// EventOutcome is what the trigger handler did with one event; the
// Recorder takes it by value on the hot path and derives the rest later.
type EventOutcome struct {
	// Event is the parsed event; it must not change after it is recorded.
	Event *event.Event
	// Raw is the event as received; it must not change after it is recorded.
	Raw []byte
	// Rules is the rule set the event was matched with.
	Rules *rules.Set
	// Tasks and Err are what Rules.Match returned.
	Tasks []task.Task
	Err   error
	// At is when the event was handled.
	At time.Time
}

// TaskAttempt is one finished attempt at a task. Result carries the task's
// ids, the attempt number, times and, on a failure, the error.
type TaskAttempt struct {
	Result task.Result
	// Final is true for the attempt whose result was published (success,
	// permanent failure or the last retry); earlier failed attempts are
	// recorded as retries.
	Final bool
	// PoisonKind is permanent or retries_exhausted for a final failure
	// (the task goes to the poison topic), "" otherwise.
	PoisonKind string
}

// Event is an event's timeline: when it was handled, what each rule of its
// type did with it, and the tasks it made with their attempts.
type Event struct {
	EventID       string    `json:"eventId"`
	EventType     string    `json:"eventType"`
	Source        string    `json:"source,omitempty"`
	CorrelationID string    `json:"correlationId"`
	ReceivedAt    time.Time `json:"receivedAt"`
	// LastHandledAt differs from ReceivedAt when the event was delivered again.
	LastHandledAt time.Time `json:"lastHandledAt"`
	Deliveries    int       `json:"deliveries"`
	// Payload is the start of the event as received (history.max_payload_bytes).
	Payload      string `json:"payload"`
	PayloadBytes int    `json:"payloadBytes"`
	// Error is why some rules failed for this event (the event was poisoned).
	Error string          `json:"error,omitempty"`
	Rules []rules.Outcome `json:"rules"`
	// MoreRules counts the rules of the event's type not listed in Rules.
	MoreRules int    `json:"moreRules,omitempty"`
	Tasks     []Task `json:"tasks"`
}

// Task is a task's history: what made it, its status and its attempts.
type Task struct {
	TaskID        string     `json:"taskId"`
	TaskName      string     `json:"taskName"`
	TaskType      string     `json:"taskType"`
	RuleID        string     `json:"ruleId"`
	EventID       string     `json:"eventId"`
	EventType     string     `json:"eventType"`
	Priority      string     `json:"priority,omitempty"`
	CorrelationID string     `json:"correlationId,omitempty"`
	Status        string     `json:"status"`
	Attempts      int        `json:"attempts"`
	CreatedAt     time.Time  `json:"createdAt"`
	UpdatedAt     time.Time  `json:"updatedAt"`
	StartedAt     *time.Time `json:"startedAt,omitempty"`
	FinishedAt    *time.Time `json:"finishedAt,omitempty"`
	DurationMs    int64      `json:"durationMs"`
	// Output is the start of the executor's output, as in the result.
	Output string `json:"output,omitempty"`
	Error  string `json:"error,omitempty"`
	// PoisonKind is permanent or retries_exhausted when the task went to
	// the poison topic.
	PoisonKind string `json:"poisonKind,omitempty"`
	// Retries are the failed attempts before the last one (task view only).
	Retries []Attempt `json:"retries,omitempty"`
}

// Attempt is one failed attempt that was retried.
type Attempt struct {
	Attempt    int       `json:"attempt"`
	StartedAt  time.Time `json:"startedAt"`
	FinishedAt time.Time `json:"finishedAt"`
	DurationMs int64     `json:"durationMs"`
	Error      string    `json:"error"`
}

// TaskQuery selects tasks, newest first. Zero fields select everything.
type TaskQuery struct {
	Status    string
	RuleID    string
	EventType string
	Since     time.Time
	Until     time.Time
	// Cursor continues a previous page (TaskPage.Next).
	Cursor string
	// Limit is the page size, default 50, at most 500.
	Limit int
}

// TaskPage is one page of tasks; Next is "" on the last page.
type TaskPage struct {
	Items []Task `json:"items"`
	Next  string `json:"next,omitempty"`
}

// PoisonMessage is a poison message kept by the history (embedded broker).
type PoisonMessage struct {
	// ID is its place in the history, increasing.
	ID         int64
	Topic      string
	UUID       string
	Payload    []byte
	Metadata   map[string]string
	PoisonedAt time.Time
}
