package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/pipeline"
)

// runPipeline runs the pipeline until ctx ends (SIGINT/SIGTERM), then drains.
func runPipeline(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	path := fs.String("config", os.Getenv("EVENTPIPE_CONFIG"), "config file (env EVENTPIPE_CONFIG)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	log := pipeline.NewLogger(cfg.Log, stderr)
	for _, w := range config.UnknownEnv(os.Environ()) {
		log.Warn(w)
	}
	p, err := pipeline.New(cfg, pipeline.WithLogger(log))
	if err != nil {
		return err
	}
	return p.Run(ctx)
}
