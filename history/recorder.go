package history

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons of history_records_dropped_total.
const (
	// DropQueueFull: the writer was behind (or the store down) and the
	// queue was full; the pipeline did not wait.
	DropQueueFull = "queue_full"
	// DropStoreDown: the store was still unreachable at shutdown.
	DropStoreDown = "store_down"
	// DropWriteError: the store answered but refused the batch several times.
	DropWriteError = "write_error"
)

// Writer back-off while the store is unreachable.
const (
	retryMin = 200 * time.Millisecond
	retryMax = 5 * time.Second
	// refusedAttempts is how often a batch the store refuses (while it
	// answers pings) is tried before it is dropped.
	refusedAttempts = 3
	// writeTimeout bounds one batch transaction.
	writeTimeout = 30 * time.Second
	// warnEvery spaces the warnings about drops and outages.
	warnEvery = 30 * time.Second
)

// Recorder feeds the store from the pipeline's hot path without ever
// blocking it: Record* put a record on a bounded queue (or drop it, counted
// and logged, when the queue is full) and one goroutine writes the queue in
// batched transactions. While the store is down the writer retries the
// batch it holds and the queue absorbs what comes meanwhile; past the
// queue's size records are dropped. Its methods are safe on a nil
// *Recorder, which records nothing.
type Recorder struct {
	store      *Store
	w          batchWriter
	log        *slog.Logger
	queue      chan record
	batchSize  int
	flushEvery time.Duration
	pruneEvery time.Duration
	metrics    recorderMetrics

	lastWarn     atomic.Int64 // unix nanos of the last drop warning
	droppedSince atomic.Int64 // drops not yet reported in a warning

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// batchWriter is where the recorder writes: the Store (tests wrap it to
// simulate an outage).
type batchWriter interface {
	write(ctx context.Context, batch []record) error
	Ping(ctx context.Context) error
}

type recorderMetrics struct {
	written prometheus.Counter
	dropped *prometheus.CounterVec
	up      prometheus.Gauge
	pruned  *prometheus.CounterVec
}

// NewRecorder starts the writer (and the retention pruner) of store.
// Metrics go on reg (nil: not exported); logs on log (nil: discarded).
// Close stops it.
func NewRecorder(store *Store, reg prometheus.Registerer, log *slog.Logger) (*Recorder, error) {
	if store == nil {
		panic("history.NewRecorder: nil store")
	}
	return newRecorder(store, store, reg, log)
}

func newRecorder(store *Store, w batchWriter, reg prometheus.Registerer, log *slog.Logger) (*Recorder, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cfg := store.cfg
	r := &Recorder{
		store:      store,
		w:          w,
		log:        log,
		queue:      make(chan record, cfg.QueueSize),
		batchSize:  cfg.BatchSize,
		flushEvery: cfg.FlushInterval,
		pruneEvery: cfg.PruneInterval,
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	r.metrics = recorderMetrics{
		written: prometheus.NewCounter(prometheus.CounterOpts{Name: "history_records_written_total",
			Help: "History records (event outcomes, task attempts) written to the history store."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "history_records_dropped_total",
			Help: "History records not written, by reason (queue_full, store_down, write_error); the pipeline went on."},
			[]string{"reason"}),
		up: prometheus.NewGauge(prometheus.GaugeOpts{Name: "history_store_up",
			Help: "1 when the last write to the history store succeeded, 0 while it fails."}),
		pruned: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "history_pruned_total",
			Help: "History rows removed by retention, by kind (events, tasks)."}, []string{"kind"}),
	}
	r.metrics.up.Set(1)
	for _, reason := range []string{DropQueueFull, DropStoreDown, DropWriteError} {
		r.metrics.dropped.WithLabelValues(reason)
	}
	if reg != nil {
		queueLen := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "history_queue_length",
			Help: "History records waiting to be written."}, func() float64 { return float64(len(r.queue)) })
		for _, c := range []prometheus.Collector{r.metrics.written, r.metrics.dropped, r.metrics.up, r.metrics.pruned, queueLen} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	go r.run()
	return r, nil
}

// RecordEvent queues what the trigger handler did with an event. It never
// blocks; o and what it points to must not change afterwards.
func (r *Recorder) RecordEvent(o EventOutcome) {
	if r == nil || o.Event == nil {
		return
	}
	select {
	case r.queue <- record{kind: kindEvent, ev: o}:
	default:
		r.drop(DropQueueFull, 1)
	}
}

// RecordAttempt queues one finished attempt at a task. It never blocks.
func (r *Recorder) RecordAttempt(a TaskAttempt) {
	if r == nil {
		return
	}
	select {
	case r.queue <- record{kind: kindAttempt, attempt: a}:
	default:
		r.drop(DropQueueFull, 1)
	}
}

// Flush waits until everything recorded before it is written (or
// dropped), or ctx ends.
func (r *Recorder) Flush(ctx context.Context) error {
	if r == nil {
		return nil
	}
	marker := record{kind: kindFlush, flushed: make(chan struct{})}
	select {
	case r.queue <- marker:
	case <-r.done:
		return errors.New("history recorder is closed")
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-marker.flushed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close writes what is queued, trying until ctx ends (what is left then is
// dropped and counted), and stops the writer. It does not close the store.
func (r *Recorder) Close(ctx context.Context) error {
	if r == nil {
		return nil
	}
	r.stopOnce.Do(func() { close(r.stop) })
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Dropped returns how many records were dropped for reason so far.
func (r *Recorder) Dropped(reason string) float64 {
	var m prometheusMetric
	_ = r.metrics.dropped.WithLabelValues(reason).Write(&m.Metric)
	return m.GetCounter().GetValue()
}

// drop counts n dropped records and warns, at most every warnEvery.
func (r *Recorder) drop(reason string, n int) {
	r.metrics.dropped.WithLabelValues(reason).Add(float64(n))
	total := r.droppedSince.Add(int64(n))
	now := time.Now().UnixNano()
	last := r.lastWarn.Load()
	if now-last < int64(warnEvery) || !r.lastWarn.CompareAndSwap(last, now) {
		return
	}
	r.droppedSince.Add(-total)
	r.log.Warn("history records dropped: the pipeline goes on, this history is incomplete",
		"reason", reason, "records", total, "queue_size", cap(r.queue))
}

// run is the writer: it batches the queue by size and age and writes
// each batch; it runs retention every pruneEvery.
func (r *Recorder) run() {
	defer close(r.done)
	prune := time.NewTicker(r.pruneEvery)
	defer prune.Stop()
	r.pruneOnce()
	batch := make([]record, 0, r.batchSize)
	for {
		select {
		case rec := <-r.queue:
			batch = append(batch, rec)
		case <-prune.C:
			r.pruneOnce()
			continue
		case <-r.stop:
			r.drain(batch)
			return
		}
		batch = r.fill(batch)
		r.writeBatch(batch)
		clear(batch)
		batch = batch[:0]
	}
}

// fill adds queued records to batch until it is full, a flush is asked
// for, flushEvery passed or the recorder stops.
func (r *Recorder) fill(batch []record) []record {
	if batch[len(batch)-1].kind == kindFlush {
		return batch
	}
	deadline := time.NewTimer(r.flushEvery)
	defer deadline.Stop()
	for len(batch) < r.batchSize {
		select {
		case rec := <-r.queue:
			batch = append(batch, rec)
			if rec.kind == kindFlush {
				return batch
			}
		case <-deadline.C:
			return batch
		case <-r.stop:
			return batch
		}
	}
	return batch
}

// drain writes what is queued at shutdown, in batches.
func (r *Recorder) drain(batch []record) {
	for {
		for len(batch) < r.batchSize {
			select {
			case rec := <-r.queue:
				batch = append(batch, rec)
				continue
			default:
			}
			break
		}
		if len(batch) == 0 {
			return
		}
		r.writeBatch(batch)
		clear(batch)
		batch = batch[:0]
	}
}

// writeBatch writes batch, retrying while the store is unreachable (until
// the recorder stops) and a few times when it refuses the batch, then
// releases the flush markers in it.
func (r *Recorder) writeBatch(batch []record) {
	defer func() {
		for _, rec := range batch {
			if rec.kind == kindFlush {
				close(rec.flushed)
			}
		}
	}()
	n := 0
	for _, rec := range batch {
		if rec.kind != kindFlush {
			n++
		}
	}
	if n == 0 {
		return
	}
	wait, refused, down := retryMin, 0, false
	var lastWarn time.Time
	for {
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		err := r.w.write(ctx, batch)
		if err == nil {
			cancel()
			r.metrics.written.Add(float64(n))
			r.metrics.up.Set(1)
			if down {
				r.log.Info("history store reachable again; writing history", "store", r.store.cfg.Store)
			}
			return
		}
		r.metrics.up.Set(0)
		pingErr := r.w.Ping(ctx)
		cancel()
		stopping := r.stopping()
		switch {
		case pingErr == nil && refused+1 >= refusedAttempts:
			r.log.Error("history store refused a batch; dropping it", "records", n, "error", err)
			r.drop(DropWriteError, n)
			return
		case pingErr == nil:
			refused++
		case stopping:
			r.log.Error("history store unreachable at shutdown; dropping the queued history",
				"records", n, "error", err)
			r.drop(DropStoreDown, n)
			return
		default:
			down = true
			if time.Since(lastWarn) >= warnEvery {
				lastWarn = time.Now()
				r.log.Warn("history store unreachable; holding history in the queue and retrying (the pipeline goes on)",
					"store", r.store.cfg.Store, "records", n, "queued", len(r.queue), "error", err)
			}
		}
		select {
		case <-time.After(wait):
		case <-r.stop:
			// One more try below, then the stopping branch drops.
		}
		wait = min(wait*2, retryMax)
	}
}

func (r *Recorder) stopping() bool {
	select {
	case <-r.stop:
		return true
	default:
		return false
	}
}

// pruneOnce runs retention; a failure is logged and tried at the next tick.
func (r *Recorder) pruneOnce() {
	ctx, cancel := context.WithTimeout(context.Background(), r.pruneEvery)
	defer cancel()
	res, err := r.store.Prune(ctx, time.Now())
	if err != nil {
		r.log.Warn("history retention failed; trying again later", "error", err)
		return
	}
	r.metrics.pruned.WithLabelValues("events").Add(float64(res.Events))
	r.metrics.pruned.WithLabelValues("tasks").Add(float64(res.Tasks))
	if res.Events+res.Tasks > 0 {
		r.log.Debug("history pruned", "events", res.Events, "tasks", res.Tasks)
	}
}
