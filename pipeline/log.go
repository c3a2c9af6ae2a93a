package pipeline

import (
	"io"
	"log/slog"

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
