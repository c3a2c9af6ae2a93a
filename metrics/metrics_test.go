package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNew_registers_every_design_metric(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := New(reg)
	// Vectors are only gathered once a child exists.
	h := m.Handler("trigger")
	h.Processed(time.Millisecond, true)
	h.Retried()
	h.Poisoned(ReasonPermanent)
	m.TaskTriggered("r1", "shell")
	m.TaskExecuted("shell", "SUCCEEDED", time.Second)
	m.SetQueueBacklog("business-events", "0", 5)
	m.RulesReloadError()

	families, err := reg.Gather()
	require.NoError(t, err)
	var names []string
	for _, f := range families {
		names = append(names, f.GetName())
	}
	assert.ElementsMatch(t, []string{
		"message_processed_total", "message_errors_total", "message_processing_time_seconds",
		"task_triggered_total", "queue_backlog", "task_executed_total", "task_execution_duration_seconds",
		"message_retries_total", "message_poisoned_total", "rules_reload_errors_total",
	}, names)
}

func TestNew_panics_on_duplicate_registration(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	New(reg)
	assert.Panics(t, func() { New(reg) })
}

func TestHandler_records_with_handler_label(t *testing.T) {
	t.Parallel()
	m := New(prometheus.NewRegistry())
	h := m.Handler("executor")
	h.Processed(10*time.Millisecond, false)
	h.Processed(20*time.Millisecond, true)
	h.Retried()
	h.Poisoned(ReasonRetriesExhausted)
	h.Poisoned(ReasonRetriesExhausted)

	assert.Equal(t, 2.0, testutil.ToFloat64(m.processed.WithLabelValues("executor")))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.errors.WithLabelValues("executor")))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.retries.WithLabelValues("executor")))
	assert.Equal(t, 2.0, testutil.ToFloat64(m.poisoned.WithLabelValues("executor", ReasonRetriesExhausted)))
	assert.Equal(t, 0.0, testutil.ToFloat64(m.processed.WithLabelValues("trigger")))
	assert.Equal(t, 1, testutil.CollectAndCount(m.processingTime))
}

func TestHandler_same_name_returns_same_children(t *testing.T) {
	t.Parallel()
	m := New(nil)
	assert.Same(t, m.Handler("a"), m.Handler("a"))
	assert.NotSame(t, m.Handler("a"), m.Handler("b"))
}

func TestMetrics_task_and_backlog_values(t *testing.T) {
	t.Parallel()
	m := New(prometheus.NewRegistry())
	m.TaskTriggered("order-created", "shell")
	m.TaskTriggered("order-created", "shell")
	m.TaskExecuted("http", "FAILED", 2*time.Second)
	m.SetQueueBacklog("schedule-tasks", "3", 42)
	m.SetQueueBacklog("schedule-tasks", "3", 7)
	m.RulesReloadError()

	assert.Equal(t, 2.0, testutil.ToFloat64(m.triggered.WithLabelValues("order-created", "shell")))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.executed.WithLabelValues("http", "FAILED")))
	assert.Equal(t, 7.0, testutil.ToFloat64(m.backlog.WithLabelValues("schedule-tasks", "3")))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.reloadErrors))
	err := testutil.CollectAndCompare(m.execDuration, strings.NewReader(`
# HELP task_execution_duration_seconds Time an executor spent on one task execution.
# TYPE task_execution_duration_seconds histogram
task_execution_duration_seconds_bucket{task_type="http",le="0.001"} 0
task_execution_duration_seconds_bucket{task_type="http",le="0.005"} 0
task_execution_duration_seconds_bucket{task_type="http",le="0.01"} 0
task_execution_duration_seconds_bucket{task_type="http",le="0.05"} 0
task_execution_duration_seconds_bucket{task_type="http",le="0.1"} 0
task_execution_duration_seconds_bucket{task_type="http",le="0.5"} 0
task_execution_duration_seconds_bucket{task_type="http",le="1"} 0
task_execution_duration_seconds_bucket{task_type="http",le="5"} 1
task_execution_duration_seconds_bucket{task_type="http",le="10"} 1
task_execution_duration_seconds_bucket{task_type="http",le="30"} 1
task_execution_duration_seconds_bucket{task_type="http",le="60"} 1
task_execution_duration_seconds_bucket{task_type="http",le="300"} 1
task_execution_duration_seconds_bucket{task_type="http",le="+Inf"} 1
task_execution_duration_seconds_sum{task_type="http"} 2
task_execution_duration_seconds_count{task_type="http"} 1
`))
	assert.NoError(t, err)
}

func TestNil_metrics_are_a_no_op(t *testing.T) {
	t.Parallel()
	var m *Metrics
	h := m.Handler("trigger")
	assert.Nil(t, h)
	assert.NotPanics(t, func() {
		h.Processed(time.Second, true)
		h.Retried()
		h.Poisoned(ReasonPanic)
		m.TaskTriggered("r", "t")
		m.TaskExecuted("t", "SUCCEEDED", time.Second)
		m.SetQueueBacklog("t", "0", 1)
		m.RulesReloadError()
	})
}

// BenchmarkHandler_Processed compares the hot-path cost with metrics on and off.
func BenchmarkHandler_Processed(b *testing.B) {
	for _, bc := range []struct {
		name string
		m    *Metrics
	}{
		{name: "on", m: New(prometheus.NewRegistry())},
		{name: "off", m: nil},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := bc.m.Handler("trigger")
			b.ReportAllocs()
			for b.Loop() {
				h.Processed(time.Millisecond, false)
				bc.m.TaskTriggered("order-created", "shell")
			}
		})
	}
}
