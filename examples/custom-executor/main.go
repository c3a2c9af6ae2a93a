// Command custom-executor embeds eventpipe in a Go program and adds an
// executor of its own, "email", next to the built-in shell, http and log.
//
// Run it with `go run ./examples/custom-executor`, then post an event whose
// rule has taskType "email" (see examples/custom-executor/rules.yaml):
//
//	curl -s localhost:8080/api/v1/events -H 'Content-Type: application/json' \
//	  -d @examples/events/order-created-high.json
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/pipeline"
	"github.com/eventpipe/eventpipe/task"
)

// sendEmail is the custom executor: a real one would call a mail API. The
// returned bytes become the result's output; an error is retried, unless it
// is wrapped with permanent.Wrap.
func sendEmail(ctx context.Context, t *task.Task) ([]byte, error) {
	to, _ := t.Parameters["to"].(string)
	if to == "" {
		return nil, fmt.Errorf("parameter to is required")
	}
	slog.InfoContext(ctx, "sending email", "to", to, "task_id", t.TaskID)
	return []byte("sent to " + to), nil
}

func main() {
	cfg, err := config.Load("")
	if err != nil {
		slog.Error("load config", "error", err)
		os.Exit(1)
	}
	cfg.Rules.File = "examples/custom-executor/rules.yaml"

	p, err := pipeline.New(cfg, pipeline.WithExecutor("email", executor.Func(sendEmail)))
	if err != nil {
		slog.Error("build pipeline", "error", err)
		os.Exit(1)
	}
	defer p.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := p.Run(ctx); err != nil {
		slog.Error("pipeline stopped", "error", err)
		os.Exit(1)
	}
}
