package pipeline_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/api"
	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/history"
	"github.com/eventpipe/eventpipe/history/historytest"
	"github.com/eventpipe/eventpipe/pipeline"
	"github.com/eventpipe/eventpipe/task"
)

// demo is a running pipeline with the shipped example rules, history on.
type demo struct {
	p      *pipeline.Pipeline
	broker *broker.Embedded
	base   string
	logs   *lockedBuffer
}

// lockedBuffer is a log sink safe for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
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

// startDemo runs the quick start's setup: examples/rules.yaml (copied),
// /bin/echo allowed, history in store.
func startDemo(t *testing.T, mutate func(*config.Config)) *demo {
	t.Helper()
	data, err := os.ReadFile("../examples/rules.yaml")
	require.NoError(t, err)
	dir := t.TempDir()
	rulesFile := filepath.Join(dir, "rules.yaml")
	require.NoError(t, os.WriteFile(rulesFile, data, 0o600))
	cfg := config.Default()
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Rules.File = rulesFile
	cfg.Executors.Shell.AllowedCommands = []string{"/bin/echo"}
	cfg.Retry.InitialInterval, cfg.Retry.MaxInterval = time.Millisecond, 5*time.Millisecond
	cfg.ShutdownTimeout = 3 * time.Second
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.History.Store = history.StoreSQLite
	cfg.History.FlushInterval = 10 * time.Millisecond
	if mutate != nil {
		mutate(cfg)
	}
	b := broker.NewEmbedded(cfg.Broker.Embedded, watermill.NopLogger{})
	t.Cleanup(func() { _ = b.Close() })
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelInfo}))
	p, err := pipeline.New(cfg, pipeline.WithBroker(b), pipeline.WithLogger(logger))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	addr := p.Addr(t.Context())
	require.NotEmpty(t, addr)
	return &demo{p: p, broker: b, base: "http://" + addr, logs: logs}
}

func (d *demo) post(t *testing.T, path, body string) *http.Response {
	t.Helper()
	resp, err := http.Post(d.base+path, "application/json", strings.NewReader(body))
	require.NoError(t, err)
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

func (d *demo) getJSON(t *testing.T, path string, into any) int {
	t.Helper()
	resp, err := http.Get(d.base + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	if into != nil && resp.StatusCode == http.StatusOK {
		require.NoError(t, json.NewDecoder(resp.Body).Decode(into))
	}
	return resp.StatusCode
}

func (d *demo) flush(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	require.NoError(t, d.p.FlushHistory(ctx))
}

// waitTask waits until the history has the task in a final status.
func (d *demo) waitTask(t *testing.T, id string) history.Task {
	t.Helper()
	var got history.Task
	require.Eventually(t, func() bool {
		d.flush(t)
		return d.getJSON(t, "/api/v1/tasks/"+id, &got) == http.StatusOK &&
			(got.Status == string(task.StatusSucceeded) || got.Status == string(task.StatusFailed))
	}, 10*time.Second, 20*time.Millisecond, "task %s never finished in the history", id)
	return got
}

func TestHistory_quick_start_event_timeline_shows_rules_and_the_refused_task(t *testing.T) {
	t.Parallel()
	d := startDemo(t, nil)
	raw, err := os.ReadFile("../examples/events/order-created-high.json")
	require.NoError(t, err)
	require.Equal(t, http.StatusAccepted, d.post(t, "/api/v1/events", string(raw)).StatusCode)
	const id = "msg-20250906-123457"
	for _, rule := range []string{"order-created-trigger", "order-audit-log", "high-value-order-echo"} {
		d.waitTask(t, task.ID(id, rule))
	}

	var ev history.Event
	require.Equal(t, http.StatusOK, d.getJSON(t, "/api/v1/events/"+id, &ev))
	assert.Equal(t, "trace-abcdef-123457", ev.CorrelationID)
	assert.Equal(t, "order.created", ev.EventType)
	var ruleIDs []string
	for _, r := range ev.Rules {
		ruleIDs = append(ruleIDs, r.RuleID)
		assert.True(t, *r.ConditionResult, r.RuleID)
		assert.Equal(t, task.ID(id, r.RuleID), r.TaskID)
	}
	assert.Equal(t, []string{"order-created-trigger", "order-audit-log", "high-value-order-echo"}, ruleIDs)
	byRule := map[string]history.Task{}
	for _, tk := range ev.Tasks {
		byRule[tk.RuleID] = tk
	}
	refused := byRule["order-created-trigger"]
	assert.Equal(t, "FAILED", refused.Status)
	assert.Equal(t, "permanent", refused.PoisonKind)
	assert.Contains(t, refused.Error, "/scripts/process-high-value-order.sh")
	assert.Contains(t, refused.Error, "allow")
	assert.Equal(t, "SUCCEEDED", byRule["high-value-order-echo"].Status)
	assert.Equal(t, "order order-12345\n", byRule["high-value-order-echo"].Output)
	assert.Equal(t, "SUCCEEDED", byRule["order-audit-log"].Status)

	// The refused task waits in the history's copy of schedule-tasks.dlq.
	var dlq api.PoisonList
	require.Eventually(t, func() bool {
		return d.getJSON(t, "/api/v1/dlq?topic=schedule-tasks", &dlq) == http.StatusOK &&
			len(dlq.Topics) == 1 && dlq.Topics[0].Waiting == 1
	}, 5*time.Second, 20*time.Millisecond)
	item := dlq.Topics[0].Items[0]
	assert.Equal(t, task.ID(id, "order-created-trigger"), item.UUID)
	assert.Equal(t, "permanent", item.ReasonKind)

	// Failed tasks by rule, as the console and `eventpipe tasks` ask.
	var page history.TaskPage
	require.Equal(t, http.StatusOK, d.getJSON(t, "/api/v1/tasks?status=failed&ruleId=order-created-trigger&since=1h", &page))
	require.Len(t, page.Items, 1)
	assert.Equal(t, refused.TaskID, page.Items[0].TaskID)

	// Replayed, it fails the same way and is kept again.
	resp := d.post(t, "/api/v1/dlq/replay", `{"topic":"schedule-tasks.dlq","positions":["`+item.Position+`","999"]}`)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var rr api.ReplayResult
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&rr))
	require.Len(t, rr.Replayed, 1)
	require.Len(t, rr.Skipped, 1)
	assert.Equal(t, "999", rr.Skipped[0].Value)
	require.Eventually(t, func() bool {
		return d.getJSON(t, "/api/v1/dlq?topic=schedule-tasks.dlq", &dlq) == http.StatusOK &&
			dlq.Topics[0].Waiting == 1 && dlq.Topics[0].Items[0].Position != item.Position
	}, 5*time.Second, 20*time.Millisecond, "the replayed task was poisoned again and kept anew")
}

func TestHistory_rule_changes_have_history_and_roll_back(t *testing.T) {
	t.Parallel()
	d := startDemo(t, nil)
	const path = "/api/v1/task-trigger-rules/order-audit-log"
	var h api.RuleHistory
	require.Equal(t, http.StatusOK, d.getJSON(t, path+"/history", &h))
	require.Len(t, h.Items, 1)
	assert.Equal(t, "load", h.Items[0].Action)
	v1 := h.Items[0].Version

	req, err := http.NewRequest(http.MethodPut, d.base+path, strings.NewReader(
		`{"eventType":"order.#","condition":"payload.amount > 5","taskName":"audit2","taskType":"log"}`))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, http.StatusOK, d.post(t, path+"/disable", "").StatusCode)

	require.Equal(t, http.StatusOK, d.getJSON(t, path+"/history", &h))
	require.Len(t, h.Items, 3)
	assert.Equal(t, "update", h.Items[1].Action)
	assert.Equal(t, "anonymous", h.Items[1].Actor)
	assert.Contains(t, h.Items[1].Changed, "condition")
	assert.Equal(t, "disable", h.Items[2].Action)

	tests := []struct {
		name string
		body string
		want int
	}{
		{name: "no version", body: `{}`, want: http.StatusBadRequest},
		{name: "unknown version", body: `{"version": 99}`, want: http.StatusNotFound},
		{name: "unknown key", body: `{"versoin": 1}`, want: http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, d.post(t, path+"/rollback", tt.body).StatusCode)
		})
	}
	stale, err := http.NewRequest(http.MethodPost, d.base+path+"/rollback", strings.NewReader(`{"version":1}`))
	require.NoError(t, err)
	stale.Header.Set("If-Match", `"order-audit-log-v1"`)
	resp, err = http.DefaultClient.Do(stale)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusPreconditionFailed, resp.StatusCode)

	resp = d.post(t, path+"/rollback", `{"version":1}`)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var restored struct {
		TaskName string `json:"taskName"`
		Version  int64  `json:"version"`
		Enabled  *bool  `json:"enabled"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&restored))
	assert.Equal(t, "order-audit", restored.TaskName)
	assert.Equal(t, v1+3, restored.Version, "a rollback is a new version")
	require.Equal(t, http.StatusOK, d.getJSON(t, path+"/history", &h))
	last := h.Items[len(h.Items)-1]
	assert.Equal(t, "rollback", last.Action)
	assert.Equal(t, v1, last.Restores)
}

// proxy forwards TCP to target until it is cut; cutting closes every
// connection and refuses new ones, as a database outage does.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{ln: ln, target: target}
	t.Cleanup(func() { _ = ln.Close(); p.setDown(true) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			down := p.down
			p.mu.Unlock()
			if down {
				_ = c.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); _ = up.Close() }()
			go func() { _, _ = io.Copy(c, up); _ = c.Close() }()
		}
	}()
	return p
}

func (p *proxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.conns = nil
	}
}

// postgresVia returns the test schema's URL with its host replaced by addr.
func postgresVia(t *testing.T, schemaURL, addr string) string {
	t.Helper()
	return strings.Replace(schemaURL, "127.0.0.1:5432", addr, 1)
}

func TestHistory_store_outage_loses_no_event_and_is_reported(t *testing.T) {
	t.Parallel()
	schemaURL := historytest.Schema(t)
	px := newProxy(t, "127.0.0.1:5432")
	d := startDemo(t, func(c *config.Config) {
		c.History.Store, c.History.PostgresURL = history.StorePostgres, postgresVia(t, schemaURL, px.ln.Addr().String())
	})
	results := (&harness{t: t, broker: d.broker}).watch("task-results")

	px.setDown(true)
	const n = 20
	var evs []string
	for i := range n {
		evs = append(evs, `{"messageId":"out-`+string(rune('a'+i))+`","eventType":"order.updated","payload":{}}`)
	}
	require.Equal(t, http.StatusAccepted, d.post(t, "/api/v1/events", "["+strings.Join(evs, ",")+"]").StatusCode)
	results.waitFor(t, n) // order-audit-log makes one task per event: the pipeline went on
	require.Eventually(t, func() bool { return strings.Contains(d.logs.String(), "history store unreachable") },
		10*time.Second, 20*time.Millisecond)
	mfs, err := d.p.Registry().Gather()
	require.NoError(t, err)
	up := -1.0
	for _, mf := range mfs {
		if mf.GetName() == "history_store_up" {
			up = mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	assert.Equal(t, 0.0, up, "history_store_up says the store is down")

	px.setDown(false)
	for i := range n {
		d.waitTask(t, task.ID("out-"+string(rune('a'+i)), "order-audit-log"))
	}
	mfs, err = d.p.Registry().Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == "history_records_dropped_total" {
			for _, m := range mf.GetMetric() {
				assert.Zero(t, m.GetCounter().GetValue(), "nothing dropped: the queue held the history through the outage")
			}
		}
	}
}

func TestHistory_two_replicas_on_postgres_see_each_others_tasks(t *testing.T) {
	t.Parallel()
	schemaURL := historytest.Schema(t)
	pg := func(c *config.Config) { c.History.Store, c.History.PostgresURL = history.StorePostgres, schemaURL }
	a, b := startDemo(t, pg), startDemo(t, pg)
	require.Equal(t, http.StatusAccepted, a.post(t, "/api/v1/events",
		`{"messageId":"on-a","eventType":"order.updated","payload":{}}`).StatusCode)
	require.Equal(t, http.StatusAccepted, b.post(t, "/api/v1/events",
		`{"messageId":"on-b","eventType":"order.updated","payload":{}}`).StatusCode)
	a.waitTask(t, task.ID("on-a", "order-audit-log"))
	b.waitTask(t, task.ID("on-b", "order-audit-log"))

	var ev history.Event
	require.Equal(t, http.StatusOK, b.getJSON(t, "/api/v1/events/on-a", &ev), "b reads what a did")
	require.Len(t, ev.Tasks, 1)
	assert.Equal(t, "SUCCEEDED", ev.Tasks[0].Status)
	var page history.TaskPage
	require.Equal(t, http.StatusOK, a.getJSON(t, "/api/v1/tasks?ruleId=order-audit-log", &page))
	var ids []string
	for _, it := range page.Items {
		ids = append(ids, it.EventID)
	}
	assert.ElementsMatch(t, []string{"on-a", "on-b"}, ids, "a lists b's task too")
}

func TestHistory_off_answers_501(t *testing.T) {
	t.Parallel()
	d := startDemo(t, func(c *config.Config) { c.History.Store = history.StoreNone })
	for _, path := range []string{"/api/v1/events/x", "/api/v1/tasks", "/api/v1/tasks/x",
		"/api/v1/task-trigger-rules/order-audit-log/history", "/api/v1/dlq"} {
		assert.Equal(t, http.StatusNotImplemented, d.getJSON(t, path, nil), path)
	}
	assert.NoError(t, d.p.FlushHistory(t.Context()))
}

func TestHistory_records_each_retry_and_the_final_result(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	flaky := executor.Func(func(context.Context, *task.Task) ([]byte, error) {
		if calls.Add(1) <= 2 {
			return nil, errors.New("temporary glitch " + strconv.Itoa(int(calls.Load())))
		}
		return []byte("ok"), nil
	})
	dir := t.TempDir()
	h := newHarness(t, func(c *config.Config) {
		c.DataDir, c.History.Store, c.History.FlushInterval = dir, history.StoreSQLite, 5*time.Millisecond
	}, map[string]executor.Executor{"flaky": flaky})
	res := h.watch("task-results")
	h.publish(ev("f1", "flaky.test"))
	res.waitFor(t, 1)
	require.NoError(t, h.p.FlushHistory(t.Context()))

	got, err := h.p.History().Task(t.Context(), task.ID("f1", "flaky"))
	require.NoError(t, err)
	assert.Equal(t, "SUCCEEDED", got.Status)
	assert.Equal(t, 3, got.Attempts)
	assert.Equal(t, "ok", got.Output)
	assert.Empty(t, got.Error, "the final result's error, not a retry's")
	require.Len(t, got.Retries, 2)
	assert.Equal(t, []int{1, 2}, []int{got.Retries[0].Attempt, got.Retries[1].Attempt})
	assert.Equal(t, "temporary glitch 1", got.Retries[0].Error)
	evGot, err := h.p.History().Event(t.Context(), "f1")
	require.NoError(t, err)
	assert.Equal(t, "trace-f1", evGot.CorrelationID)
}
