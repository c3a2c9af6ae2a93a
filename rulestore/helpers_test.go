package rulestore_test

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/rulestore"
)

// seedRules is a valid rules file of two rules on order.created.
const seedRules = `taskTriggerRules:
  - ruleId: "high-value"
    eventType: "order.created"
    condition: "payload.amount > 1000"
    taskType: "log"
    parameters:
      order: "${payload.orderId}"
      timeout: 60
  - ruleId: "all-orders"
    eventType: "order.*"
    taskType: "log"
`

// logBuffer is a goroutine-safe buffer for a text slog handler.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lines returns the log lines containing every one of subs.
func (l *logBuffer) lines(subs ...string) []string {
	var out []string
	for line := range strings.Lines(l.String()) {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// countingMetrics counts RulesReloadError calls.
type countingMetrics struct{ n atomic.Int64 }

func (m *countingMetrics) RulesReloadError() { m.n.Add(1) }

// fixture is a store on a rules file in a temporary directory.
type fixture struct {
	path    string
	store   *rulestore.Store
	logs    *logBuffer
	metrics *countingMetrics
}

// newFixture writes content (if not "") to a fresh rules file and opens a
// store on it with cfg's other fields.
func newFixture(t *testing.T, content string, cfg rulestore.Config) *fixture {
	t.Helper()
	f := &fixture{logs: &logBuffer{}, metrics: &countingMetrics{}}
	if cfg.Path == "" {
		f.path = filepath.Join(t.TempDir(), "rules.yaml")
		require.NoError(t, os.WriteFile(f.path, []byte(content), 0o640))
		cfg.Path = f.path
	}
	cfg.Logger = slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.Metrics = f.metrics
	s, err := rulestore.Open(cfg)
	require.NoError(t, err)
	f.store = s
	return f
}

// reopen opens a new store on the same file, as a restart would.
func (f *fixture) reopen(t *testing.T, opts ...rules.Option) *rulestore.Store {
	t.Helper()
	s, err := rulestore.Open(rulestore.Config{Path: f.path, Options: opts})
	require.NoError(t, err)
	return s
}

func (f *fixture) read(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(f.path)
	require.NoError(t, err)
	return string(b)
}

// ruleIDs lists the ids of rs in order.
func ruleIDs(rs []rules.Rule) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.RuleID
	}
	return out
}

// matched lists the rule ids of the tasks e makes for ev, or "error" when
// Match fails. It does not use t, so Eventually conditions may call it.
func matched(_ *testing.T, e *rules.Engine, ev *event.Event) []string {
	tasks, err := e.Match(ev)
	if err != nil {
		return []string{"error: " + err.Error()}
	}
	out := []string{}
	for _, tk := range tasks {
		out = append(out, tk.RuleID)
	}
	return out
}

func mustEvent(t *testing.T, js string) *event.Event {
	t.Helper()
	ev, err := event.Parse([]byte(js))
	require.NoError(t, err)
	return ev
}

func ptr[T any](v T) *T { return &v }
