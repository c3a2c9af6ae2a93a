// Package pipeline assembles eventpipe: broker, rules, executors, router,
// middleware and HTTP server. It is the public embedding API:
//
//	p, err := pipeline.New(cfg, pipeline.WithExecutor("email", sendEmail))
//	...
//	err = p.Run(ctx) // until ctx ends, then a graceful drain
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventpipe/eventpipe/api"
	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/crashmark"
	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/handlers"
	"github.com/eventpipe/eventpipe/history"
	"github.com/eventpipe/eventpipe/metrics"
	"github.com/eventpipe/eventpipe/middleware"
	"github.com/eventpipe/eventpipe/progress"
	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/rulestore"
	"github.com/eventpipe/eventpipe/task"
	"github.com/eventpipe/eventpipe/tracing"
)

// Pipeline is a running eventpipe: build it with New, start it with Run.
type Pipeline struct {
	cfg       *config.Config
	log       *slog.Logger
	wlog      watermill.LoggerAdapter
	registry  *prometheus.Registry
	metrics   *metrics.Metrics
	broker    broker.Broker
	ownBroker bool
	engine    *rules.Engine
	rules     *rulestore.Store
	crashes   *crashmark.Dir
	progress  *progress.Tracker
	// backlog is the broker's last reported backlog, by topic (nil until
	// the first report, or when the broker cannot tell).
	backlog atomic.Pointer[progress.Backlog]
	// backlogErr is set while the broker's backlog cannot be read.
	backlogErr atomic.Pointer[backlogFailure]
	executors  *executor.Registry
	tracing    *tracing.Provider
	router     *message.Router
	server     *api.Server
	// ruleOpts check every rule: load, reload, API and dry run alike.
	ruleOpts []rules.Option
	// history and recorder are nil when history.store is none.
	history  *history.Store
	recorder *history.Recorder

	// abort ends running tasks at the drain deadline (see Executor.Abort).
	abortCtx context.Context
	abort    context.CancelFunc

	// listening is closed once addr holds the HTTP listen address.
	listening chan struct{}
	addr      string
	closers   []func() error // resources New opened besides the broker
	closeMu   sync.Mutex
	closed    bool
}

// New builds a pipeline from cfg: it connects the broker, loads and compiles
// the rules, registers the executors and wires the router and HTTP server.
// Nothing is consumed until Run. cfg is validated first; start from
// config.Default() or config.Load.
func New(cfg *config.Config, opts ...Option) (*Pipeline, error) {
	if cfg == nil {
		panic("pipeline.New: nil config")
	}
	if err := errors.Join(cfg.Validate(), historyConfig(cfg).Validate()); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	p := &Pipeline{cfg: cfg, log: o.logger, registry: o.registry, listening: make(chan struct{}), progress: progress.NewTracker()}
	var err error
	if p.log == nil {
		p.log = NewLogger(cfg.Log, os.Stderr)
	}
	if err = p.setupTracing(o.tracer); err != nil {
		return nil, err
	}
	built := false
	defer func() {
		if !built {
			_ = p.shutdownTracing() // stop the exporter of a pipeline that never ran
		}
	}()
	if p.registry == nil {
		p.registry = prometheus.NewRegistry()
		p.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if cfg.Metrics.Enabled {
		p.metrics = metrics.New(p.registry)
	}
	p.abortCtx, p.abort = context.WithCancel(context.Background())
	if p.executors, err = buildExecutors(cfg, p.log, o.executors); err != nil {
		return nil, err
	}
	budget := ruleBudget(cfg)
	if err := budget.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	p.ruleOpts = ruleOptions(cfg, p.executors.Names(), rules.NewGate(budget.ConcurrentEvaluations))
	if err = p.openHistory(); err != nil {
		return nil, err
	}
	var changes rulestore.ChangeLog
	if p.history != nil {
		changes = p.history
	}
	if p.rules, err = openRuleStore(cfg, p.log, p.metrics, p.ruleOpts, changes); err != nil {
		_ = p.Close()
		return nil, err
	}
	p.recordLoadedRules()
	if p.crashes, err = crashmark.Open(crashDir(cfg)); err != nil {
		_ = p.Close()
		return nil, err
	}
	if n := p.crashes.Left(); n > 0 {
		p.log.Warn("events were being evaluated when the last process stopped; each is poisoned when it comes back",
			"events", n, "dir", crashDir(cfg))
	}
	p.engine = p.rules.Engine()
	// Watermill logs some per-message events at Info (e.g. GoChannel's "No
	// subscribers to send message"); eventpipe keeps Info for lifecycle lines.
	wlog := newWatermillLogger(p.log)
	p.broker, p.ownBroker = o.broker, o.broker == nil
	if p.ownBroker {
		if p.broker, err = broker.New(cfg.Broker, cfg.Topics, wlog); err != nil {
			return nil, fmt.Errorf("connect %s broker: %w", cfg.Broker.Kind, err)
		}
	}
	if c, ok := p.broker.(interface{ Collector() prometheus.Collector }); ok && p.metrics != nil {
		// The broker's own metrics (RabbitMQ: blocked connection, unroutable
		// publishes, drops from bounded queues); one set per registry.
		if err := p.registry.Register(c.Collector()); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			_ = p.Close()
			return nil, fmt.Errorf("register broker metrics: %w", err)
		}
	}
	if err := p.buildRouter(wlog, &o); err != nil {
		_ = p.Close()
		return nil, err
	}
	p.server, err = api.New(api.Config{
		Addr:            cfg.HTTP.Addr,
		Token:           cfg.HTTP.Token,
		Tokens:          cfg.HTTP.Tokens,
		MaxBodyBytes:    cfg.HTTP.MaxBatchBytes,
		MaxRuleBytes:    cfg.HTTP.MaxBodyBytes,
		MaxEventBytes:   cfg.Event.MaxBytes,
		ReadTimeout:     cfg.HTTP.ReadTimeout,
		WriteTimeout:    cfg.HTTP.WriteTimeout,
		IdleTimeout:     cfg.HTTP.IdleTimeout,
		ShutdownTimeout: drainTime(cfg.ShutdownTimeout),
	}, p.apiDeps())
	if err != nil {
		_ = p.Close()
		return nil, err
	}
	built = true
	return p, nil
}

// buildExecutors registers the built-ins, then the caller's.
func buildExecutors(cfg *config.Config, log *slog.Logger, extra []namedExecutor) (*executor.Registry, error) {
	reg := executor.NewRegistry()
	shell, err := executor.NewShell(executor.ShellConfig{
		AllowedCommands: cfg.Executors.Shell.AllowedCommands,
		AllowShell:      cfg.Executors.Shell.AllowShell,
		MaxOutputBytes:  cfg.Executors.Shell.MaxOutputBytes,
		DefaultTimeout:  cfg.Executors.Shell.DefaultTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("executors.shell: %w", err)
	}
	httpExec, err := executor.NewHTTP(executor.HTTPConfig{
		AllowedHosts:         cfg.Executors.HTTP.AllowedHosts,
		AllowPrivateNetworks: cfg.Executors.HTTP.AllowPrivateNetworks,
		DefaultTimeout:       cfg.Executors.HTTP.DefaultTimeout,
		MaxResponseBytes:     cfg.Executors.HTTP.MaxResponseBytes,
	})
	if err != nil {
		return nil, fmt.Errorf("executors.http: %w", err)
	}
	reg.MustRegister(executor.TypeLog, executor.NewLog(log))
	reg.MustRegister(executor.TypeShell, shell)
	reg.MustRegister(executor.TypeHTTP, httpExec)
	for _, e := range extra {
		if err := reg.Register(e.name, e.exec); err != nil {
			return nil, fmt.Errorf("register executor: %w", err)
		}
	}
	return reg, nil
}

// buildRouter adds the trigger and executor handlers, each with the
// middleware chain, and the caller's handlers.
func (p *Pipeline) buildRouter(wlog watermill.LoggerAdapter, o *options) error {
	cfg := p.cfg
	p.wlog = wlog
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: cfg.ShutdownTimeout}, wlog)
	if err != nil {
		return fmt.Errorf("create router: %w", err)
	}
	router.AddMiddleware(o.middleware...)
	pub := p.broker.Publisher()

	trigger := &handlers.Trigger{
		Parser:     event.Parser{MaxBytes: cfg.Event.MaxBytes},
		Rules:      p.engine,
		Crashes:    p.crashes,
		Publisher:  pub,
		TasksTopic: cfg.Topics.Tasks,
		Metrics:    p.metrics,
		Logger:     p.log.With("handler_name", "trigger"),
	}
	if p.recorder != nil {
		trigger.History = eventHistory{rec: p.recorder, engine: p.engine}
	}
	if err := p.addHandler(router, "trigger", cfg.Topics.Events, cfg.Trigger.Concurrency, trigger.Handle,
		middleware.ChainConfig{Timeout: cfg.Trigger.Timeout}); err != nil {
		return err
	}

	dedup := o.dedup
	if dedup == nil {
		if dedup, err = p.dedupStore(); err != nil {
			return err
		}
	}
	exec := &handlers.Executor{
		Executors:    p.executors,
		Publisher:    pub,
		ResultsTopic: cfg.Topics.Results,
		Timeout:      cfg.Executor.Timeout,
		Abort:        p.abortCtx,
		Metrics:      p.metrics,
		Logger:       p.log.With("handler_name", "executor"),
	}
	if p.recorder != nil {
		exec.History = p.recorder
	}
	// No chain Timeout: the handler bounds each task by its own timeout.
	if err := p.addHandler(router, "executor", cfg.Topics.Tasks, cfg.Executor.Concurrency, exec.Handle,
		middleware.ChainConfig{Dedup: dedup, DedupKey: taskKey}); err != nil {
		return err
	}
	for _, h := range o.handlers {
		if err := p.addHandler(router, h.name, h.topic, 1, h.fn, middleware.ChainConfig{}); err != nil {
			return err
		}
	}
	if err := p.addPoisonKeeper(router); err != nil {
		return err
	}
	p.router = router
	return nil
}

// addHandler subscribes n competing handlers to topic through one
// subscriber (one consumer group), each wrapped in the chain: n messages of
// the topic are in flight at once.
func (p *Pipeline) addHandler(router *message.Router, name, topic string, n int,
	fn message.NoPublishHandlerFunc, chain middleware.ChainConfig) error {
	n = max(n, 1)
	sub, err := p.broker.Subscriber(topic)
	if err != nil {
		return fmt.Errorf("subscribe %s to %s: %w", name, topic, err)
	}
	chain.HandlerName = name
	chain.PoisonPublisher = p.broker.Publisher()
	chain.PoisonTopic = p.cfg.Topics.Poison(topic)
	chain.Retry = p.cfg.Retry
	chain.Metrics = p.metrics
	chain.Logger = p.wlog
	if p.tracing.Enabled() {
		chain.Tracer = p.tracing.Tracer()
		chain.MessagingSystem = messagingSystem(p.cfg.Broker.Kind)
	}
	mws, err := middleware.Chain(chain)
	if err != nil {
		return fmt.Errorf("middleware of %s: %w", name, err)
	}
	for i := range n {
		hname := name
		if n > 1 {
			hname = name + "-" + strconv.Itoa(i+1)
		}
		// Progress is outermost: readiness must see every message taken.
		router.AddConsumerHandler(hname, topic, sub, fn).
			AddMiddleware(append([]message.HandlerMiddleware{p.progress.Middleware(name, topic)}, mws...)...)
	}
	return nil
}

// setupTracing uses tp when the caller gave one (WithTracerProvider), else
// the provider the OTEL_* environment describes, which Close shuts down.
// With tracing on, log lines in a traced context get trace_id and span_id.
func (p *Pipeline) setupTracing(tp *trace.TracerProvider) error {
	if tp != nil {
		p.tracing = tracing.NewProvider(*tp)
	} else {
		var err error
		if p.tracing, err = tracing.Setup(context.Background()); err != nil {
			return fmt.Errorf("tracing: %w", err)
		}
		p.closers = append(p.closers, p.shutdownTracing)
	}
	if p.tracing.Enabled() {
		p.log = slog.New(tracing.NewLogHandler(p.log.Handler()))
	}
	return nil
}

// tracedHTTP is the tracer provider of the HTTP server: nil when tracing is off.
func (p *Pipeline) tracedHTTP() trace.TracerProvider {
	if !p.tracing.Enabled() {
		return nil
	}
	return p.tracing.TracerProvider()
}

// messagingSystem is the messaging.system span attribute of a broker kind.
func messagingSystem(kind string) string {
	if kind == config.BrokerAMQP {
		return "rabbitmq"
	}
	return kind
}

// shutdownTracingTimeout bounds flushing the last spans at Close.
const shutdownTracingTimeout = 5 * time.Second

// shutdownTracing flushes the spans not exported yet, within shutdownTracingTimeout.
func (p *Pipeline) shutdownTracing() error {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTracingTimeout)
	defer cancel()
	return p.tracing.Shutdown(ctx)
}

// dedupStore builds the task de-duplication store dedup.store names.
func (p *Pipeline) dedupStore() (middleware.DedupStore, error) {
	cfg := p.cfg.Dedup
	if cfg.Store == config.DedupRedis {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := middleware.NewRedisDedupStore(ctx, cfg.RedisURL, cfg.TTL, "eventpipe:dedup:")
		if err != nil {
			return nil, err
		}
		p.closers = append(p.closers, s.Close)
		return s, nil
	}
	s, err := middleware.NewMemoryDedupStore(cfg.MaxEntries, cfg.TTL)
	if err != nil {
		return nil, fmt.Errorf("dedup store: %w", err)
	}
	return s, nil
}

// taskKey de-duplicates tasks by task id (the message UUID is the task id too).
func taskKey(msg *message.Message) string {
	if id := msg.Metadata.Get(task.MetaTaskID); id != "" {
		return id
	}
	return msg.UUID
}

// Run consumes and serves until ctx ends, then shuts down gracefully: the
// HTTP server stops taking events, handlers stop taking messages, running
// tasks get until shutdown_timeout to finish, and what is still running then
// is cancelled and left for redelivery. Run returns early with an error if
// the router or the HTTP server fails.
func (p *Pipeline) Run(ctx context.Context) error {
	// The rules file watcher runs as long as Run and has stopped when it returns.
	watchCtx, stopWatch := context.WithCancel(ctx)
	waitWatch := watchRules(watchCtx, p.rules)
	defer func() { stopWatch(); waitWatch() }()
	routerErr := make(chan error, 1)
	go func() { routerErr <- p.router.Run(context.WithoutCancel(ctx)) }()
	select {
	case <-p.router.Running():
	case err := <-routerErr:
		return fmt.Errorf("router: %w", err)
	case <-ctx.Done():
		return p.shutdown(nil, time.Now())
	}

	ln, err := net.Listen("tcp", p.cfg.HTTP.Addr)
	if err != nil {
		return p.shutdown(fmt.Errorf("listen on %s: %w", p.cfg.HTTP.Addr, err), time.Now())
	}
	p.addr = ln.Addr().String()
	close(p.listening)
	serveCtx, stopServe := context.WithCancel(ctx)
	defer stopServe()
	serveErr := make(chan error, 1)
	go func() { serveErr <- p.server.Serve(serveCtx, ln) }()
	go p.reportBacklog(serveCtx, min(backlogInterval, p.stallTimeout()/4))
	p.log.Info("eventpipe running", "broker", p.cfg.Broker.Kind, "http_addr", ln.Addr().String(),
		"rules", len(p.engine.Set().Rules()), "executors", p.executors.Names())

	var failure error
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		// Serve also returns (nil) when ctx ends, which may win this select.
		switch {
		case err != nil:
			failure = fmt.Errorf("http server: %w", err)
		case ctx.Err() == nil:
			failure = errors.New("http server stopped")
		}
		serveErr <- nil
	case err := <-routerErr:
		failure = fmt.Errorf("router stopped: %w", err)
		routerErr <- nil
	}
	// One shutdown timeout from now for everything: the HTTP server drains
	// first (its handlers feed the router, which still consumes), within
	// drainTime, then the router within what is left of it.
	stopAt := time.Now()
	stopServe()
	if err := <-serveErr; err != nil {
		failure = errors.Join(failure, err)
	}
	return p.shutdown(failure, stopAt)
}

// crashDir is where the marks of events being evaluated are kept.
func crashDir(cfg *config.Config) string {
	dir := cfg.DataDir
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "eventpipe")
	}
	return filepath.Join(dir, "evaluating")
}

// stallTimeout is readiness.stall_timeout or its default.
func (p *Pipeline) stallTimeout() time.Duration {
	if p.cfg.Readiness.StallTimeout > 0 {
		return p.cfg.Readiness.StallTimeout
	}
	return progress.DefaultStallTimeout
}

// backlogInterval is how often queue_backlog is refreshed from the broker.
const backlogInterval = 5 * time.Second

// reportBacklog reads the broker's backlog until ctx ends, if the broker
// can tell it: readiness uses the last reading, and queue_backlog exports
// it when metrics are on.
func (p *Pipeline) reportBacklog(ctx context.Context, every time.Duration) {
	reporter, ok := p.broker.(broker.BacklogReporter)
	if !ok {
		return
	}
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		backlog, err := reporter.Backlog(ctx)
		if err != nil {
			p.log.Warn("read queue backlog", "error", err)
			p.backlogErr.Store(&backlogFailure{err: err, since: p.backlogFailingSince()})
		} else {
			byTopic := progress.Backlog{}
			for _, b := range backlog {
				byTopic[b.Topic] += b.Messages
			}
			p.backlog.Store(&byTopic)
			p.backlogErr.Store(nil)
		}
		if p.metrics != nil {
			for _, b := range backlog {
				p.metrics.SetQueueBacklog(b.Topic, b.Partition, float64(b.Messages))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// drainTime is how much of the shutdown timeout running work gets before it
// is aborted. The rest is kept back for the aborted handlers to return and
// the broker to close: a tenth, at least 2 s, at most half.
func drainTime(timeout time.Duration) time.Duration {
	return timeout - min(max(timeout/10, 2*time.Second), timeout/2)
}

// shutdown drains the router: Router.Close stops the subscriptions and waits
// for running handlers; running tasks are aborted drainTime after stopAt
// (when the shutdown began) so their handlers can still return (nack, no
// poison) and the broker close within the shutdown timeout.
func (p *Pipeline) shutdown(failure error, stopAt time.Time) error {
	timer := time.AfterFunc(time.Until(stopAt.Add(drainTime(p.cfg.ShutdownTimeout))), p.abort)
	defer timer.Stop()
	if err := p.router.Close(); err != nil {
		failure = errors.Join(failure, fmt.Errorf("close router: %w", err))
	}
	p.log.Info("eventpipe stopped", "drain_ms", time.Since(stopAt).Milliseconds())
	return errors.Join(failure, p.Close())
}

// Close releases the broker (if the pipeline opened it). Run calls it; call
// it yourself only when Run was never called. It is safe to call twice.
func (p *Pipeline) Close() error {
	p.closeMu.Lock()
	defer p.closeMu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	p.abort()
	errs := []error{p.closeBroker()}
	for _, c := range p.closers {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}

func (p *Pipeline) closeBroker() error {
	if !p.ownBroker || p.broker == nil {
		return nil
	}
	if err := p.broker.Close(); err != nil {
		return fmt.Errorf("close broker: %w", err)
	}
	return nil
}

// Addr waits until Run listens and returns the HTTP server's address (useful
// with addr 127.0.0.1:0), or "" if ctx ends first.
func (p *Pipeline) Addr(ctx context.Context) string {
	select {
	case <-p.listening:
		return p.addr
	case <-ctx.Done():
		return ""
	}
}

// Running is closed once the router consumes messages.
func (p *Pipeline) Running() <-chan struct{} { return p.router.Running() }

// Ready reports whether the router is running, the broker reachable, every
// subscribed topic assigned to this process (when the broker can tell, see
// progress.AssignmentReporter) and every topic with a backlog consumed
// within readiness.stall_timeout.
func (p *Pipeline) Ready(ctx context.Context) error {
	if !p.router.IsRunning() || p.router.IsClosed() {
		return errors.New("router is not running")
	}
	if err := p.broker.Ping(ctx); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	if ar, ok := p.broker.(progress.AssignmentReporter); ok {
		topics, err := ar.Unassigned(ctx)
		if err != nil {
			return fmt.Errorf("broker assignment: %w", err)
		}
		if len(topics) > 0 {
			return fmt.Errorf("no partition assigned to this process for %s", strings.Join(topics, ", "))
		}
	}
	if f := p.backlogErr.Load(); f != nil && time.Since(f.since) > p.stallTimeout() {
		// Topics lost after a broker restart look like this: whether
		// anything waits is unknown, and nothing may be consumed.
		return fmt.Errorf("the broker's backlog cannot be read since %s (readiness.stall_timeout %s): %w",
			f.since.UTC().Format(time.RFC3339), p.stallTimeout(), f.err)
	}
	if b := p.backlog.Load(); b != nil {
		return p.progress.Stalled(*b, p.stallTimeout())
	}
	return nil
}

// backlogFailure is a failing backlog read and when the failures began.
type backlogFailure struct {
	err   error
	since time.Time
}

// backlogFailingSince is when the current run of failed backlog reads began.
func (p *Pipeline) backlogFailingSince() time.Time {
	if f := p.backlogErr.Load(); f != nil {
		return f.since
	}
	return time.Now()
}

// Engine returns the rule engine the trigger handler matches with. Its rule
// set belongs to Rules(): change rules there, so they are versioned and saved.
func (p *Pipeline) Engine() *rules.Engine { return p.engine }

// Rules returns the rule store: the versioned rule set behind the rules API
// and the rules file, e.g. to Replace the whole set from code.
func (p *Pipeline) Rules() *rulestore.Store { return p.rules }

// Registry returns the Prometheus registry the pipeline's metrics are on.
func (p *Pipeline) Registry() *prometheus.Registry { return p.registry }

// PublishEvents publishes validated events to the events topic, each with
// its messageId as the message UUID. It implements api.EventPublisher.
func (p *Pipeline) PublishEvents(ctx context.Context, events []api.Ingested) error {
	msgs := make([]*message.Message, len(events))
	for i, e := range events {
		msgs[i] = EventMessage(ctx, e)
	}
	if err := p.broker.Publisher().Publish(p.cfg.Topics.Events, msgs...); err != nil {
		return fmt.Errorf("publish %d events to %s: %w", len(msgs), p.cfg.Topics.Events, err)
	}
	return nil
}

// EventMessage is the message an accepted event travels in: its messageId
// as UUID, the bytes as the producer sent them, and its type as metadata
// (AMQP routes events by type).
func EventMessage(ctx context.Context, e api.Ingested) *message.Message {
	m := message.NewMessage(e.ID, message.Payload(e.Raw))
	if e.Event != nil {
		m.Metadata.Set(broker.MetaEventType, e.Event.EventType)
	}
	tracing.Inject(ctx, m) // the request's trace continues in the trigger
	m.SetContext(ctx)
	return m
}
