package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/api"
	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/history"
	"github.com/eventpipe/eventpipe/pipeline"
	"github.com/eventpipe/eventpipe/task"
)

// runDemo runs the quick start in-process (example rules, /bin/echo
// allowed, SQLite history, embedded broker) with a token, and returns a
// config file that points the CLI at it.
func runDemo(t *testing.T) (string, *pipeline.Pipeline) {
	t.Helper()
	dir := t.TempDir()
	data, err := os.ReadFile(repoFile("examples/rules.yaml"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "rules.yaml"), data, 0o600))
	cfg := config.Default()
	cfg.HTTP.Addr, cfg.HTTP.Token = "127.0.0.1:0", "s3cret"
	cfg.Rules.File = filepath.Join(dir, "rules.yaml")
	cfg.Executors.Shell.AllowedCommands = []string{"/bin/echo"}
	cfg.DataDir, cfg.History.Store, cfg.History.FlushInterval = filepath.Join(dir, "data"), history.StoreSQLite, 10*time.Millisecond
	cfg.ShutdownTimeout = 3 * time.Second
	p, err := pipeline.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	addr := p.Addr(t.Context())
	require.NotEmpty(t, addr)
	file := filepath.Join(dir, "cli.yaml")
	require.NoError(t, os.WriteFile(file, fmt.Appendf(nil, "http:\n  addr: %s\n  token: s3cret\n", addr), 0o600))
	return file, p
}

func publishAndWait(t *testing.T, p *pipeline.Pipeline, raw string, taskIDs ...string) {
	t.Helper()
	var probe struct {
		MessageID string `json:"messageId"`
	}
	require.NoError(t, json.Unmarshal([]byte(raw), &probe))
	require.NoError(t, p.PublishEvents(t.Context(), []api.Ingested{{ID: probe.MessageID, Raw: json.RawMessage(raw)}}))
	require.Eventually(t, func() bool {
		require.NoError(t, p.FlushHistory(t.Context()))
		for _, id := range taskIDs {
			tk, err := p.History().Task(t.Context(), id)
			if err != nil || (tk.Status != "SUCCEEDED" && tk.Status != "FAILED") {
				return false
			}
		}
		return true
	}, 10*time.Second, 20*time.Millisecond)
}

func TestTraceTasksAndDLQ_on_the_quick_start(t *testing.T) {
	t.Parallel()
	file, p := runDemo(t)
	raw, err := os.ReadFile(repoFile("examples/events/order-created-high.json"))
	require.NoError(t, err)
	const id = "msg-20250906-123457"
	refused := task.ID(id, "order-created-trigger")
	publishAndWait(t, p, string(raw), refused, task.ID(id, "high-value-order-echo"), task.ID(id, "order-audit-log"))

	code, stdout, stderr := eventpipe(t, "trace", "--config", file, id)
	require.Equal(t, 0, code, stderr)
	for _, want := range []string{"correlation trace-abcdef-123457", "order-created-trigger", "high-value-order-echo",
		"order-audit-log", "FAILED (poisoned: permanent)", "/scripts/process-high-value-order.sh", "order order-12345"} {
		assert.Contains(t, stdout, want)
	}

	code, stdout, stderr = eventpipe(t, "trace", "--config", file, "--json", id)
	require.Equal(t, 0, code, stderr)
	var ev history.Event
	require.NoError(t, json.Unmarshal([]byte(stdout), &ev))
	assert.Len(t, ev.Tasks, 3)

	code, stdout, stderr = eventpipe(t, "tasks", "--config", file, "--status", "failed", "--since", "1h")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, refused)
	assert.Contains(t, stdout, "1 tasks")
	assert.NotContains(t, stdout, task.ID(id, "order-audit-log"))

	code, stdout, stderr = eventpipe(t, "tasks", "--config", file, "--rule", "order-audit-log", "--json")
	require.Equal(t, 0, code, stderr)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	require.Len(t, lines, 1)
	var tk history.Task
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &tk))
	assert.Equal(t, "SUCCEEDED", tk.Status)

	code, stdout, stderr = eventpipe(t, "dlq", "list", "--config", file)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, refused)
	assert.Contains(t, stdout, "schedule-tasks.dlq: 1 waiting, 1 shown")
	code, stdout, stderr = eventpipe(t, "dlq", "replay", "--config", file, "--reason", "allow")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "replayed "+refused+" from schedule-tasks.dlq to schedule-tasks")
	assert.Contains(t, stdout, "replayed 1 poison messages")

	code, _, stderr = eventpipe(t, "trace", "--config", file, "no-such-event")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "404")
}

func TestTraceTasks_usage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{name: "trace without id", args: []string{"trace"}, code: 2, want: "trace needs one EVENT_ID"},
		{name: "bad since", args: []string{"tasks", "--since", "yesterday"}, code: 2, want: `--since "yesterday"`},
		{name: "negative limit", args: []string{"tasks", "--limit", "-1"}, code: 2, want: "--limit must be >= 0"},
		{name: "help", args: []string{"tasks", "--help"}, code: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := eventpipe(t, tt.args...)
			assert.Equal(t, tt.code, code, stderr)
			assert.Contains(t, stderr, tt.want)
			if tt.code == 0 {
				assert.Contains(t, stdout, "--status")
			}
		})
	}
}

func TestTrace_without_token_is_refused(t *testing.T) {
	t.Parallel()
	file, _ := runDemo(t)
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	noToken := filepath.Join(t.TempDir(), "cli.yaml")
	require.NoError(t, os.WriteFile(noToken, []byte(strings.Replace(string(data), "s3cret", "wrong", 1)), 0o600))
	code, _, stderr := eventpipe(t, "tasks", "--config", noToken)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "401")
}
