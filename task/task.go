// Package task holds the Task published on schedule-tasks, the Result
// published on task-results, and the deterministic task id.
package task

import (
	"crypto/sha1"
	"time"

	"github.com/google/uuid"
)

// Status is the outcome of a task execution.
type Status string

// Result statuses.
const (
	StatusSucceeded Status = "SUCCEEDED"
	StatusFailed    Status = "FAILED"
)

// Task is one unit of work produced by a rule for an event.
type Task struct {
	// TaskID is deterministic: ID(EventID, RuleID).
	TaskID   string `json:"taskId"`
	TaskName string `json:"taskName"`
	// TaskType names the executor that runs the task.
	TaskType string `json:"taskType"`
	// Priority is HIGH, MEDIUM or LOW.
	Priority   string         `json:"priority"`
	Parameters map[string]any `json:"parameters"`
	// Timeout is the execution timeout in seconds; 0 means the executor default.
	Timeout   int    `json:"timeout,omitempty"`
	RuleID    string `json:"ruleId"`
	EventID   string `json:"eventId"`
	EventType string `json:"eventType"`
	TraceID   string `json:"traceId,omitempty"`
	// PartitionKey keeps tasks with the same key in order on Kafka.
	PartitionKey string    `json:"partitionKey,omitempty"`
	CreatedAt    time.Time `json:"createdAt"`
}

// TimeoutDuration returns Timeout as a duration, or def when Timeout is not set.
func (t *Task) TimeoutDuration(def time.Duration) time.Duration {
	if t.Timeout <= 0 {
		return def
	}
	return time.Duration(t.Timeout) * time.Second
}

// Result is the outcome of running a task.
type Result struct {
	TaskID     string    `json:"taskId"`
	TaskName   string    `json:"taskName"`
	TaskType   string    `json:"taskType"`
	RuleID     string    `json:"ruleId"`
	EventID    string    `json:"eventId"`
	TraceID    string    `json:"traceId,omitempty"`
	Status     Status    `json:"status"`
	Attempts   int       `json:"attempts"`
	StartedAt  time.Time `json:"startedAt"`
	FinishedAt time.Time `json:"finishedAt"`
	DurationMs int64     `json:"durationMs"`
	// Output is the executor's output, truncated to a bounded size.
	Output string `json:"output,omitempty"`
	Error  string `json:"error,omitempty"`
}

// namespace makes task ids UUIDv5 values of their own space.
var namespace = uuid.MustParse("6f1b3c2e-8d4a-5e7f-9a0b-1c2d3e4f5a6b")

// ID returns the deterministic id of the task that ruleID makes for eventID:
// a redelivered event yields the same task id, which the executor de-duplicates on.
func ID(eventID, ruleID string) string {
	// uuid.NewSHA1(namespace, eventID+"\x00"+ruleID), computed on the stack:
	// the library's form allocates five times, for every task of every event.
	// The NUL separator keeps ("ab","c") and ("a","bc") apart.
	var buf [128]byte
	b := append(buf[:0], namespace[:]...)
	b = append(b, eventID...)
	b = append(b, 0)
	b = append(b, ruleID...)
	sum := sha1.Sum(b)
	var id uuid.UUID
	copy(id[:], sum[:])
	id[6] = (id[6] & 0x0f) | 0x50 // version 5
	id[8] = (id[8] & 0x3f) | 0x80 // RFC 4122 variant
	return id.String()
}

// Message metadata keys set on every task message. The broker layer reads
// MetaPartitionKey (Kafka message key) and MetaPriority (AMQP priority).
const (
	MetaTaskID       = "task_id"
	MetaRuleID       = "rule_id"
	MetaTaskType     = "task_type"
	MetaPartitionKey = "partition_key"
	MetaPriority     = "priority"
)
