package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/pipeline"
)

// designMetrics are the metric names DESIGN.md ("Metrics") fixes for users
// and outside tools.
var designMetrics = []string{
	"message_processed_total", "message_errors_total", "message_processing_time_seconds",
	"task_triggered_total", "queue_backlog", "task_executed_total",
	"task_execution_duration_seconds", "message_retries_total", "message_poisoned_total",
}

// scrapeSeries are series Prometheus itself adds to every scrape target.
var scrapeSeries = map[string]bool{"up": true}

func TestDashboardAndRules_use_every_design_metric(t *testing.T) {
	t.Parallel()
	used := usedFamilies(t)
	for _, name := range designMetrics {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			assert.Contains(t, used, name, "no rule or dashboard panel uses %s", name)
		})
	}
}

// TestMetricsContract_every_metric_the_dashboard_and_rules_use_is_exported
// runs a real pipeline, sends an event through it and reads /metrics: a
// metric renamed in code but not in deploy/ (or the other way round) fails
// here, naming the file and rule or panel that uses it.
func TestMetricsContract_every_metric_the_dashboard_and_rules_use_is_exported(t *testing.T) {
	used := usedFamilies(t)
	require.Contains(t, used, "message_processed_total", "the expression lexer found no metrics: is it broken?")

	addr := startPipeline(t)
	postEvent(t, addr, filepath.Join("..", "examples", "events", "order-created-high.json"))

	// The executor records task_executed_total, then the poison middleware
	// message_poisoned_total (the example's shell tasks are refused by the
	// default config's empty allowlist); wait until everything that can
	// appear has appeared, or time out and report what is missing.
	var exported, handlers map[string]bool
	deadline := time.Now().Add(15 * time.Second)
	for {
		exported, handlers = scrapeFamilies(t, addr)
		missing := 0
		for name := range used {
			if !exported[name] && !scrapeSeries[name] {
				missing++
			}
		}
		if (missing == 0 && exported["task_executed_total"]) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	require.True(t, exported["task_executed_total"], "no task was executed within 15s")

	// The rules select handlers by name (task_trigger_success_rate reads
	// handler="trigger"): a renamed handler would silently empty them.
	exprs, _ := expressions(t)
	for _, e := range exprs {
		for _, m := range handlerLabel.FindAllStringSubmatch(e.expr, -1) {
			assert.True(t, handlers[m[1]], "%s selects handler %q, which the pipeline does not label any metric with (has %v)",
				e.where, m[1], handlers)
		}
	}

	names := make([]string, 0, len(used))
	for name := range used {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			switch {
			case scrapeSeries[name]:
				t.Logf("%s is added by Prometheus per scrape target", name)
			case exported[name]:
			default:
				t.Errorf("%s is used by %s but the running pipeline's /metrics does not export it",
					name, strings.Join(used[name], ", "))
			}
		})
	}
}

// startPipeline runs a pipeline on the embedded broker with the example
// rules and returns its HTTP address; it is stopped when the test ends.
func startPipeline(t *testing.T) string {
	t.Helper()
	cfg := config.Default()
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Rules.File = filepath.Join("..", "examples", "rules.yaml")
	cfg.ShutdownTimeout = 5 * time.Second
	// Failing tasks (refused shell commands) log at Warn: expected here.
	p, err := pipeline.New(cfg, pipeline.WithLogger(slog.New(slog.DiscardHandler)))
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err, "pipeline stopped with an error")
		case <-time.After(15 * time.Second):
			t.Error("pipeline did not stop within 15s")
		}
	})

	addrCtx, cancelAddr := context.WithTimeout(ctx, 10*time.Second)
	defer cancelAddr()
	addr := p.Addr(addrCtx)
	require.NotEmpty(t, addr, "pipeline did not listen within 10s")
	return addr
}

// postEvent sends the event file to POST /api/v1/events and expects 202.
func postEvent(t *testing.T, addr, path string) {
	t.Helper()
	body, err := os.ReadFile(path)
	require.NoError(t, err)
	resp, err := http.Post("http://"+addr+"/api/v1/events", "application/json", bytes.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	require.Equal(t, http.StatusAccepted, resp.StatusCode, "POST /api/v1/events: %s", msg)
}

// scrapeFamilies returns the metric family names GET /metrics exports (its
// "# TYPE" lines: client_golang writes one per exported family) and the
// values of the handler label its samples carry.
func scrapeFamilies(t *testing.T, addr string) (families, handlers map[string]bool) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	families, handlers = map[string]bool{}, map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			if name, _, ok := strings.Cut(rest, " "); ok {
				families[name] = true
			}
			continue
		}
		if m := handlerLabel.FindStringSubmatch(line); m != nil {
			handlers[m[1]] = true
		}
	}
	require.NoError(t, sc.Err())
	return families, handlers
}

// handlerLabel finds a handler label matcher (in PromQL: =, !=; in the
// exposition format: =) and its value.
var handlerLabel = regexp.MustCompile(`\bhandler!?="([^"$]+)"`)
