package executor

import (
	"context"
	"log/slog"

	"github.com/eventpipe/eventpipe/task"
)

// NewLog returns the log executor: it logs each task at Debug level and
// returns a short output. It exists for demos and benchmarks, so it does no
// other work; a nil logger means slog.Default().
func NewLog(logger *slog.Logger) Executor {
	if logger == nil {
		logger = slog.Default()
	}
	return logExecutor{logger: logger}
}

type logExecutor struct {
	logger *slog.Logger
}

func (e logExecutor) Execute(ctx context.Context, t *task.Task) ([]byte, error) {
	if err := checkTask(t); err != nil {
		return nil, err
	}
	// Checking the level first skips building the attributes when Debug is
	// off, the usual case on the hot path.
	if e.logger.Enabled(ctx, slog.LevelDebug) {
		e.logger.LogAttrs(ctx, slog.LevelDebug, "task executed",
			slog.String("task_id", t.TaskID),
			slog.String("rule_id", t.RuleID),
			slog.String("correlation_id", t.TraceID),
			slog.String("task_name", t.TaskName),
		)
	}
	const prefix = "logged task "
	out := make([]byte, 0, len(prefix)+len(t.TaskID))
	return append(append(out, prefix...), t.TaskID...), nil
}
