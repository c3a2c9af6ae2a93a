package metrics

import (
	"context"
	"sort"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
)

// ExemplarTraceID is the exemplar label holding a trace id, the name
// Grafana and Prometheus link to a tracing backend by default.
const ExemplarTraceID = "trace_id"

// exemplarInterval is how long a bucket keeps its exemplar before a newer
// sampled observation in that bucket replaces it.
const exemplarInterval = time.Second

// histogram is one histogram child that records exemplars. Prometheus keeps
// one exemplar per bucket, read at scrape time, and building one costs a
// dozen allocations; so a bucket takes a new exemplar at most once per
// exemplarInterval. A latency spike lands in a bucket that rarely gets
// observations, so it still gets its trace id at once; the busy buckets
// skip the cost.
type histogram struct {
	obs    prometheus.Observer
	eo     prometheus.ExemplarObserver // nil if obs cannot take exemplars
	bounds []float64
	last   []atomic.Int64 // per bucket (+Inf last): unix nanos of its exemplar
}

func newHistogram(obs prometheus.Observer, bounds []float64) *histogram {
	eo, _ := obs.(prometheus.ExemplarObserver)
	return &histogram{obs: obs, eo: eo, bounds: bounds, last: make([]atomic.Int64, len(bounds)+1)}
}

// observe records d, with the trace id of ctx's sampled span as the
// exemplar when its bucket is due one. Exemplars are served only in the
// OpenMetrics format, which the /metrics endpoint offers.
func (h *histogram) observe(ctx context.Context, d time.Duration) {
	v := d.Seconds()
	if h.eo != nil {
		if sc := trace.SpanContextFromContext(ctx); sc.IsSampled() && h.due(v) {
			h.eo.ObserveWithExemplar(v, prometheus.Labels{ExemplarTraceID: sc.TraceID().String()})
			return
		}
	}
	h.obs.Observe(v)
}

// due reports whether v's bucket takes a new exemplar now, and claims it.
func (h *histogram) due(v float64) bool {
	last := &h.last[sort.SearchFloat64s(h.bounds, v)]
	now := time.Now().UnixNano()
	prev := last.Load()
	return now-prev >= int64(exemplarInterval) && last.CompareAndSwap(prev, now)
}
