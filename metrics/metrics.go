// Package metrics holds eventpipe's Prometheus collectors, under the names
// DESIGN.md fixes. A nil *Metrics means "metrics off": every method is a no-op.
//
// Labels are bounded: handler, topic, partition, rule_id, task_type, status
// and reason come from configuration or small fixed sets, never from an
// event or task id.
package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Poison reasons, the values of the reason label of message_poisoned_total
// (and of the reason_kind metadata the poison middleware sets).
const (
	ReasonPermanent        = "permanent"
	ReasonRetriesExhausted = "retries_exhausted"
	ReasonPanic            = "panic"
)

// Bucket bounds (seconds) of the duration histograms.
var (
	processingTimeBuckets = []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5, 10, 30}
	execDurationBuckets   = []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300}
)

// Metrics holds every collector. Create it with New; share one per process.
type Metrics struct {
	processed      *prometheus.CounterVec
	errors         *prometheus.CounterVec
	processingTime *prometheus.HistogramVec
	retries        *prometheus.CounterVec
	poisoned       *prometheus.CounterVec
	triggered      *prometheus.CounterVec
	backlog        *prometheus.GaugeVec
	executed       *prometheus.CounterVec
	execDuration   *prometheus.HistogramVec
	reloadErrors   prometheus.Counter

	mu       sync.Mutex
	handlers map[string]*Handler

	// Children cached by label values: WithLabelValues hashes the labels on
	// every call, a map lookup is a few times cheaper.
	triggeredBy childCache[prometheus.Counter]
	executedBy  childCache[prometheus.Counter]
	durationBy  childCache[*histogram]
}

// childCache caches the children of one metric vector by label values.
type childCache[T any] struct {
	mu       sync.RWMutex
	children map[[2]string]T
}

// get returns the child for key, creating it with newChild on first use.
func (c *childCache[T]) get(key [2]string, newChild func() T) T {
	c.mu.RLock()
	child, ok := c.children[key]
	c.mu.RUnlock()
	if ok {
		return child
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if child, ok := c.children[key]; ok {
		return child
	}
	if c.children == nil {
		c.children = map[[2]string]T{}
	}
	child = newChild()
	c.children[key] = child
	return child
}

// New creates the collectors and registers them on reg. A nil reg registers
// nowhere (for tests). It panics if reg already holds collectors of the same
// names: that is a wiring bug.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		processed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "message_processed_total",
			Help: "Messages a handler finished, whatever the outcome.",
		}, []string{"handler"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "message_errors_total",
			Help: "Messages a handler failed: poisoned, or returned to the broker for redelivery (shutdown interruptions excluded).",
		}, []string{"handler"}),
		processingTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "message_processing_time_seconds",
			Help:    "Time a handler spent on a message, retries and backoff included.",
			Buckets: processingTimeBuckets,
		}, []string{"handler"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "message_retries_total",
			Help: "Handler attempts after the first one.",
		}, []string{"handler"}),
		poisoned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "message_poisoned_total",
			Help: "Messages published to a poison topic, by reason (permanent, retries_exhausted, panic).",
		}, []string{"handler", "reason"}),
		triggered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "task_triggered_total",
			Help: "Tasks made by trigger rules.",
		}, []string{"rule_id", "task_type"}),
		backlog: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "queue_backlog",
			Help: "Messages waiting to be consumed: consumer lag (Kafka) or queue depth (AMQP).",
		}, []string{"topic", "partition"}),
		executed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "task_executed_total",
			Help: "Task executions by task type and result status (SUCCEEDED, FAILED).",
		}, []string{"task_type", "status"}),
		execDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "task_execution_duration_seconds",
			Help:    "Time an executor spent on one task execution.",
			Buckets: execDurationBuckets,
		}, []string{"task_type"}),
		reloadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rules_reload_errors_total",
			Help: "Rule reloads rejected because the new rules were invalid.",
		}),
		handlers: map[string]*Handler{},
	}
	if reg != nil {
		reg.MustRegister(m.processed, m.errors, m.processingTime, m.retries, m.poisoned,
			m.triggered, m.backlog, m.executed, m.execDuration, m.reloadErrors)
	}
	return m
}

// Handler returns the collectors of one handler with the handler label
// already applied, so the hot path skips the label lookup. Repeated calls
// with the same name return the same *Handler. On a nil *Metrics it returns
// nil, which is usable and records nothing.
func (m *Metrics) Handler(name string) *Handler {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if h, ok := m.handlers[name]; ok {
		return h
	}
	h := &Handler{
		processed:      m.processed.WithLabelValues(name),
		errors:         m.errors.WithLabelValues(name),
		processingTime: newHistogram(m.processingTime.WithLabelValues(name), processingTimeBuckets),
		retries:        m.retries.WithLabelValues(name),
		poisoned:       m.poisoned.MustCurryWith(prometheus.Labels{"handler": name}),
	}
	m.handlers[name] = h
	return h
}

// TaskTriggered counts one task made by rule ruleID.
func (m *Metrics) TaskTriggered(ruleID, taskType string) {
	if m == nil {
		return
	}
	m.triggeredBy.get([2]string{ruleID, taskType}, func() prometheus.Counter {
		return m.triggered.WithLabelValues(ruleID, taskType)
	}).Inc()
}

// TaskExecuted records one task execution. taskType must be a registered
// executor name (pass "unknown" otherwise: task types come from messages and
// would make the label unbounded); status is task.StatusSucceeded or
// task.StatusFailed.
func (m *Metrics) TaskExecuted(taskType, status string, d time.Duration) {
	m.TaskExecutedContext(context.Background(), taskType, status, d)
}

// TaskExecutedContext is TaskExecuted for an execution whose context may
// hold a sampled span: its trace id then becomes the exemplar of the
// task_execution_duration_seconds observation (see exemplars).
func (m *Metrics) TaskExecutedContext(ctx context.Context, taskType, status string, d time.Duration) {
	if m == nil {
		return
	}
	m.executedBy.get([2]string{taskType, status}, func() prometheus.Counter {
		return m.executed.WithLabelValues(taskType, status)
	}).Inc()
	m.durationBy.get([2]string{taskType}, func() *histogram {
		return newHistogram(m.execDuration.WithLabelValues(taskType), execDurationBuckets)
	}).observe(ctx, d)
}

// SetQueueBacklog sets the number of messages waiting on topic's partition
// ("" where the broker has no partitions).
func (m *Metrics) SetQueueBacklog(topic, partition string, n float64) {
	if m == nil {
		return
	}
	m.backlog.WithLabelValues(topic, partition).Set(n)
}

// RulesReloadError counts one rejected rules reload.
func (m *Metrics) RulesReloadError() {
	if m == nil {
		return
	}
	m.reloadErrors.Inc()
}

// Handler holds one handler's collectors. A nil *Handler records nothing.
type Handler struct {
	processed      prometheus.Counter
	errors         prometheus.Counter
	processingTime *histogram
	retries        prometheus.Counter
	poisoned       *prometheus.CounterVec
}

// Processed records one finished message that took d; failed counts it in
// message_errors_total too.
func (h *Handler) Processed(d time.Duration, failed bool) {
	h.ProcessedContext(context.Background(), d, failed)
}

// ProcessedContext is Processed for a delivery whose context may hold a
// sampled span: its trace id then becomes the exemplar of the
// message_processing_time_seconds observation (see exemplars), so a
// latency spike leads to a trace.
func (h *Handler) ProcessedContext(ctx context.Context, d time.Duration, failed bool) {
	if h == nil {
		return
	}
	h.processed.Inc()
	h.processingTime.observe(ctx, d)
	if failed {
		h.errors.Inc()
	}
}

// Retried counts one attempt after the first.
func (h *Handler) Retried() {
	if h == nil {
		return
	}
	h.retries.Inc()
}

// Poisoned counts one message published to the poison topic. reason is one
// of ReasonPermanent, ReasonRetriesExhausted, ReasonPanic.
func (h *Handler) Poisoned(reason string) {
	if h == nil {
		return
	}
	h.poisoned.WithLabelValues(reason).Inc()
}
