package task_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/task"
)

func TestID_is_deterministic_and_distinct(t *testing.T) {
	t.Parallel()
	assert.Equal(t, task.ID("e1", "r1"), task.ID("e1", "r1"))
	assert.NotEqual(t, task.ID("e1", "r1"), task.ID("e1", "r2"))
	assert.NotEqual(t, task.ID("e1", "r1"), task.ID("e2", "r1"))
	assert.NotEqual(t, task.ID("ab", "c"), task.ID("a", "bc"))
	assert.Len(t, task.ID("e1", "r1"), 36)
}

func TestTask_json_uses_design_field_names(t *testing.T) {
	t.Parallel()
	tk := task.Task{TaskID: "t", TaskName: "n", TaskType: "log", Priority: "HIGH",
		Parameters: map[string]any{"a": 1}, Timeout: 5, RuleID: "r", EventID: "e",
		EventType: "order.created", TraceID: "tr", CreatedAt: time.Unix(0, 0).UTC()}
	b, err := json.Marshal(tk)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	for _, k := range []string{"taskId", "taskName", "taskType", "priority", "parameters",
		"timeout", "ruleId", "eventId", "eventType", "traceId", "createdAt"} {
		assert.Contains(t, m, k)
	}
}

func TestResult_json_uses_design_field_names(t *testing.T) {
	t.Parallel()
	r := task.Result{TaskID: "t", Status: task.StatusFailed, Attempts: 3, Output: "o", Error: "e"}
	b, err := json.Marshal(r)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	for _, k := range []string{"taskId", "taskName", "taskType", "ruleId", "eventId", "status",
		"attempts", "startedAt", "finishedAt", "durationMs", "output", "error"} {
		assert.Contains(t, m, k)
	}
	assert.Equal(t, "FAILED", m["status"])
}

func TestTimeoutDuration(t *testing.T) {
	t.Parallel()
	assert.Equal(t, 7*time.Second, (&task.Task{}).TimeoutDuration(7*time.Second))
	assert.Equal(t, 3*time.Second, (&task.Task{Timeout: 3}).TimeoutDuration(7*time.Second))
}

func TestID_is_the_UUIDv5_of_event_and_rule(t *testing.T) {
	t.Parallel()
	ns := uuid.MustParse("6f1b3c2e-8d4a-5e7f-9a0b-1c2d3e4f5a6b")
	long := strings.Repeat("x", 300) // past the stack buffer
	for _, in := range [][2]string{{"e1", "r1"}, {"", ""}, {long, "r"}, {"e", long}} {
		assert.Equal(t, uuid.NewSHA1(ns, []byte(in[0]+"\x00"+in[1])).String(), task.ID(in[0], in[1]))
	}
}
