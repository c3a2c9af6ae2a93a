package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// lockedBuffer is a goroutine-safe log sink.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A misspelt EVENTPIPE_* variable is a warning at start naming the one
// meant: EVENTPIPE_API_TOKN=secret would otherwise leave the API without
// its token, silently. Not parallel: it sets the environment.
func TestRun_warns_about_an_unknown_EVENTPIPE_variable(t *testing.T) {
	t.Setenv("EVENTPIPE_API_TOKN", "secret")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "eventpipe.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("http:\n  addr: 127.0.0.1:0\ndata_dir: "+dir+"\n"), 0o600))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stderr lockedBuffer
	done := make(chan error, 1)
	go func() { done <- runPipeline(ctx, []string{"--config", cfg}, &stderr) }()
	require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "eventpipe running") },
		10*time.Second, 20*time.Millisecond, "logs: %s", stderr.String())
	cancel()
	require.NoError(t, <-done)
	var line string
	for l := range strings.Lines(stderr.String()) {
		if strings.Contains(l, "EVENTPIPE_API_TOKN") {
			line = l
		}
	}
	assert.Contains(t, line, "level=WARN")
	assert.Contains(t, line, "unknown environment variable EVENTPIPE_API_TOKN is ignored; did you mean EVENTPIPE_API_TOKEN?")
}
