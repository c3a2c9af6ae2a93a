package executor_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/permanent"
)

func TestLog_logs_task_ids_at_debug(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		level   slog.Level
		wantLog bool
	}{
		{name: "debug enabled logs the task", level: slog.LevelDebug, wantLog: true},
		{name: "info level logs nothing", level: slog.LevelInfo, wantLog: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			logger := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: tt.level}))
			tk := newTask(map[string]any{"message": "hi"})

			out, err := executor.NewLog(logger).Execute(t.Context(), tk)

			require.NoError(t, err)
			assert.Equal(t, "logged task "+tk.TaskID, string(out))
			if !tt.wantLog {
				assert.Empty(t, buf.String())
				return
			}
			var rec map[string]any
			require.NoError(t, json.Unmarshal(buf.Bytes(), &rec))
			assert.Equal(t, "DEBUG", rec["level"])
			assert.Equal(t, tk.TaskID, rec["task_id"])
			assert.Equal(t, "rule-1", rec["rule_id"])
			assert.Equal(t, "trace-1", rec["correlation_id"])
			assert.Equal(t, "test-task", rec["task_name"])
		})
	}
}

func TestLog_nil_logger_uses_default_and_nil_task_is_permanent(t *testing.T) {
	t.Parallel()
	e := executor.NewLog(nil)

	_, err := e.Execute(t.Context(), nil)

	require.Error(t, err)
	assert.True(t, permanent.Is(err))
}

func BenchmarkLog(b *testing.B) {
	for _, bc := range []struct {
		name  string
		level slog.Level
	}{
		{name: "debug_off", level: slog.LevelInfo},
		{name: "debug_on", level: slog.LevelDebug},
	} {
		b.Run(bc.name, func(b *testing.B) {
			logger := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: bc.level}))
			e := executor.NewLog(logger)
			tk := newTask(nil)
			ctx := b.Context()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.Execute(ctx, tk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
