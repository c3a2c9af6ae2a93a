// Command eventpipe runs the event-triggered task pipeline and its tools.
// It only wires: flags, config, signals; the work lives in the packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `eventpipe — event-triggered task pipeline

usage:
  eventpipe run [--config FILE]
  eventpipe rules validate [--task-types a,b] FILE...
  eventpipe rules test --rules FILE --event FILE [--json] [--task-types a,b]
  eventpipe publish [--config FILE] FILE|-
  eventpipe dlq list [--config FILE] [--topic T]... [--reason R] [--limit N] [--json]
  eventpipe dlq replay [--config FILE] [--topic T]... [--reason R] [--dry-run]
  eventpipe trace [--config FILE] [--json] EVENT_ID
  eventpipe tasks [--config FILE] [--status S] [--rule R] [--event-type T] [--since D] [--until D] [--limit N] [--json]
  eventpipe version
`

// errUsage marks a command line that could not be understood (exit 2).
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes one command and returns the process exit code:
// 0 success, 1 failure (invalid input, failed run), 2 bad usage.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = runPipeline(ctx, args[1:], stderr)
	case "rules":
		err = rulesCmd(args[1:], stdout)
	case "publish":
		err = publishCmd(ctx, args[1:], stdin, stdout, stderr)
	case "dlq":
		err = dlqCmd(ctx, args[1:], stdout, stderr)
	case "trace":
		err = traceCmd(ctx, args[1:], stdout)
	case "tasks":
		err = tasksCmd(ctx, args[1:], stdout)
	case "version", "--version":
		fmt.Fprintf(stdout, "eventpipe %s\n", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		err = fmt.Errorf("%w: unknown command %q", errUsage, args[0])
	}
	switch {
	case err == nil, errors.Is(err, errHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "eventpipe: %v\n\n%s", err, usage)
		return 2
	default:
		fmt.Fprintf(stderr, "eventpipe: %v\n", err)
		return 1
	}
}
