package pipeline

import (
	"context"
	"io"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/eventpipe/eventpipe/config"
)

// NewLogger builds the process logger from the log config: text or JSON.
func NewLogger(cfg config.Log, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.SlogLevel()}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// watermillLogTrace is the slog level Watermill's adapter logs Trace at.
const watermillLogTrace = slog.LevelDebug - 4

// watermillLogger is the Watermill logger adapter over log, with Watermill's
// Info lines (some are per message) at Debug. It drops a Debug or Trace
// call before its fields are turned into slog attributes: Watermill's own
// adapter converts them first, several allocations for every message the
// router handles, then lets slog discard the line.
type watermillLogger struct {
	watermill.LoggerAdapter
	log *slog.Logger
}

func newWatermillLogger(log *slog.Logger) watermillLogger {
	return watermillLogger{
		LoggerAdapter: watermill.NewSlogLoggerWithLevelMapping(log, map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug}),
		log:           log,
	}
}

func (l watermillLogger) enabled(level slog.Level) bool {
	return l.log.Enabled(context.Background(), level)
}

func (l watermillLogger) Info(msg string, fields watermill.LogFields) {
	if l.enabled(slog.LevelDebug) {
		l.LoggerAdapter.Info(msg, fields)
	}
}

func (l watermillLogger) Debug(msg string, fields watermill.LogFields) {
	if l.enabled(slog.LevelDebug) {
		l.LoggerAdapter.Debug(msg, fields)
	}
}

func (l watermillLogger) Trace(msg string, fields watermill.LogFields) {
	if l.enabled(watermillLogTrace) {
		l.LoggerAdapter.Trace(msg, fields)
	}
}

func (l watermillLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return watermillLogger{LoggerAdapter: l.LoggerAdapter.With(fields), log: l.log}
}
