package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/pipeline"
)

// startPipeline runs an embedded pipeline without rules and returns a
// config file pointing publish at its HTTP address.
func startPipeline(t *testing.T) (configFile string, p *pipeline.Pipeline) {
	t.Helper()
	cfg := config.Default()
	cfg.HTTP.Addr = "127.0.0.1:0"
	p, err := pipeline.New(cfg, pipeline.WithLogger(slog.New(slog.NewTextHandler(t.Output(), nil))))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	addr := p.Addr(t.Context())
	require.NotEmpty(t, addr)
	configFile = filepath.Join(t.TempDir(), "publish.yaml")
	require.NoError(t, os.WriteFile(configFile, []byte("http:\n  addr: "+addr+"\n"), 0o600))
	return configFile, p
}

func jsonLines(n, badLine int) []byte {
	var b bytes.Buffer
	for i := 1; i <= n; i++ {
		if i == badLine {
			b.WriteString(`{"messageId":"broken","payload":{}}` + "\n") // no eventType
			continue
		}
		fmt.Fprintf(&b, `{"messageId":"m-%d","eventType":"order.created","payload":{"n":%d}}`+"\n", i, i)
	}
	return b.Bytes()
}

func TestPublish_json_lines_to_a_running_pipeline(t *testing.T) {
	t.Parallel()
	cfgFile, p := startPipeline(t)
	file := filepath.Join(t.TempDir(), "events.jsonl")
	require.NoError(t, os.WriteFile(file, jsonLines(5000, 0), 0o600))

	var out, errOut bytes.Buffer
	code := run(t.Context(), []string{"publish", "--config", cfgFile, file}, nil, &out, &errOut)
	assert.Equal(t, 0, code, errOut.String())
	assert.Contains(t, out.String(), "sent 5000, failed 0")
	processed := metricValue(t, p, "message_processed_total", "trigger")
	assert.Positive(t, processed, "the pipeline received the events")
}

func TestPublish_invalid_line_is_reported_the_rest_sent_exit_1(t *testing.T) {
	t.Parallel()
	cfgFile, _ := startPipeline(t)
	var out, errOut bytes.Buffer
	code := run(t.Context(), []string{"publish", "--config", cfgFile, "-"},
		bytes.NewReader(jsonLines(1000, 17)), &out, &errOut)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut.String(), `line 17: `)
	assert.Contains(t, errOut.String(), `"eventType"`)
	assert.Contains(t, out.String(), "sent 999, failed 1")
}

func TestPublish_unreachable_pipeline_fails_every_event(t *testing.T) {
	t.Parallel()
	cfgFile := filepath.Join(t.TempDir(), "publish.yaml")
	require.NoError(t, os.WriteFile(cfgFile, []byte("http:\n  addr: 127.0.0.1:1\n"), 0o600))
	var out, errOut bytes.Buffer
	code := run(t.Context(), []string{"publish", "--config", cfgFile, "-"},
		strings.NewReader(`{"eventType":"a"}`), &out, &errOut)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut.String(), "is `eventpipe run` serving")
	assert.Contains(t, out.String(), "sent 0, failed 1")
}

// metricValue reads a counter of the pipeline's registry by handler label.
func metricValue(t *testing.T, p *pipeline.Pipeline, name, handler string) float64 {
	t.Helper()
	families, err := p.Registry().Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "handler" && l.GetValue() == handler {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestPublish_large_events_are_batched_under_the_body_limit(t *testing.T) {
	t.Parallel()
	cfgFile, _ := startPipeline(t)
	// 300 events of ~40 KiB: 12 MiB in all, above the 8 MiB request limit.
	var b bytes.Buffer
	pad := strings.Repeat("x", 40<<10)
	for i := range 300 {
		fmt.Fprintf(&b, `{"messageId":"big-%d","eventType":"order.created","payload":{"pad":%q}}`+"\n", i, pad)
	}
	var out, errOut bytes.Buffer
	code := run(t.Context(), []string{"publish", "--config", cfgFile, "-"}, &b, &out, &errOut)
	assert.Equal(t, 0, code, errOut.String())
	assert.Contains(t, out.String(), "sent 300, failed 0")
}
