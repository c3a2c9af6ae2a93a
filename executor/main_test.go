package executor_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// scriptDir holds the test scripts. They are written once, before any test
// runs: executing a file that a parallel test's fork still holds open for
// writing fails with "text file busy".
var scriptDir string

// secretEnv is set in the test process; no task may see it.
const secretEnv = "EVENTPIPE_TEST_PARENT_SECRET"

var scripts = map[string]string{
	// argv.sh prints its argument count, then each argument in brackets.
	"argv.sh": `printf '%s\n' "$#"; for a in "$@"; do printf '[%s]\n' "$a"; done`,
	// spawn.sh starts a child, records both pids, and waits forever.
	"spawn.sh": `sleep 30 & echo $! > "$1"; echo $$ > "$2"; wait`,
	// escape.sh leaves a grandchild in another session holding stdout, then exits 0.
	"escape.sh": `setsid sleep 30 & echo $! > "$1"; echo done`,
	// bigout.sh writes $1 bytes.
	"bigout.sh": `head -c "$1" /dev/zero | tr '\0' x`,
	// fail.sh fails with output on both streams.
	"fail.sh": `echo starting; echo "boom: disk full" >&2; exit 3`,
	// sleep.sh runs until killed.
	"sleep.sh": `exec sleep 30`,
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "executor-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	scriptDir = dir
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	// Set here, not with t.Setenv, which cannot be used with t.Parallel.
	os.Setenv(secretEnv, "hunter2")
	return m.Run()
}

func script(name string) string { return filepath.Join(scriptDir, name) }
