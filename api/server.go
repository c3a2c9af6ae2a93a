// Package api is eventpipe's HTTP server: event ingest, the rules API,
// /metrics, /healthz and /readyz.
//
// It depends only on small consumer-side interfaces (EventPublisher,
// Readiness, RuleStore) and a prometheus.Gatherer, so the pipeline decides
// what sits behind them.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/tracing"
)

// Defaults used for zero Config fields.
const (
	DefaultAddr              = "127.0.0.1:8080"
	DefaultMaxBodyBytes      = 4 << 20
	DefaultMaxRuleBytes      = 1 << 20
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultReadTimeout       = 30 * time.Second
	DefaultWriteTimeout      = 30 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultShutdownTimeout   = 10 * time.Second
	// DefaultReadyTimeout bounds one Readiness.Ready call.
	DefaultReadyTimeout = 2 * time.Second
)

// Config configures the HTTP server. Zero fields take the Default* values.
type Config struct {
	// Addr is the listen address, default DefaultAddr. A non-loopback
	// address needs a token.
	Addr string
	// Token is the bearer token mutating endpoints require, named "default"
	// in audit logs. Empty and no Tokens: no authentication (loopback only).
	Token string
	// Tokens are further bearer tokens by name; the name is logged with each
	// authenticated request so changes can be traced to a client.
	Tokens map[string]string
	// MaxBodyBytes limits every request body, default DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// MaxRuleBytes limits the body of a rule create or update (413 above
	// it), default DefaultMaxRuleBytes: a rule is small, an event batch is not.
	MaxRuleBytes int64
	// MaxEventBytes limits one event, default event.DefaultMaxBytes.
	MaxEventBytes int

	ReadHeaderTimeout time.Duration // default DefaultReadHeaderTimeout
	ReadTimeout       time.Duration // default DefaultReadTimeout
	WriteTimeout      time.Duration // default DefaultWriteTimeout
	IdleTimeout       time.Duration // default DefaultIdleTimeout
	// RequestTimeout is each request's deadline (its context's): a publish
	// or dry run still running then is answered 503 with Retry-After. It
	// must be shorter than WriteTimeout, or the server would close the
	// connection before the answer: default WriteTimeout less a tenth, and
	// at least a second less.
	RequestTimeout time.Duration
	// ShutdownTimeout bounds the graceful shutdown once the Serve context
	// ends; connections still open after it are closed. Default DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
}

func (c *Config) setDefaults() {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxRuleBytes <= 0 {
		c.MaxRuleBytes = DefaultMaxRuleBytes
	}
	if c.MaxEventBytes <= 0 {
		c.MaxEventBytes = event.DefaultMaxBytes
	}
	setDuration(&c.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	setDuration(&c.ReadTimeout, DefaultReadTimeout)
	setDuration(&c.WriteTimeout, DefaultWriteTimeout)
	setDuration(&c.IdleTimeout, DefaultIdleTimeout)
	setDuration(&c.ShutdownTimeout, DefaultShutdownTimeout)
	setDuration(&c.RequestTimeout, c.WriteTimeout-max(c.WriteTimeout/10, time.Second))
}

func setDuration(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

// Ingested is one accepted event of a POST /api/v1/events request.
type Ingested struct {
	// ID is the event's messageId (derived from the content when absent).
	ID string
	// Raw is the event exactly as the client sent it; this is what goes on
	// the events topic, so the trigger handler sees the same bytes as from
	// any other producer.
	Raw json.RawMessage
	// Event is the parsed, validated event.
	Event *event.Event
}

// EventPublisher publishes ingested events to the events topic. It returns
// only after every event is published (or with an error), so a 202 answer
// means the events are on the broker.
type EventPublisher interface {
	PublishEvents(ctx context.Context, events []Ingested) error
}

// Readiness reports whether the pipeline can do its work (router running,
// broker reachable). A nil error means ready.
type Readiness interface {
	Ready(ctx context.Context) error
}

// ReadinessFunc adapts a function to Readiness.
type ReadinessFunc func(ctx context.Context) error

// Ready calls f(ctx).
func (f ReadinessFunc) Ready(ctx context.Context) error { return f(ctx) }

// Deps are the server's collaborators.
type Deps struct {
	// Events receives ingested events. Required.
	Events EventPublisher
	// Gatherer is exposed on /metrics. Required.
	Gatherer prometheus.Gatherer
	// Readiness backs /readyz; nil means ready whenever the server serves.
	Readiness Readiness
	// Logger logs requests at Debug and failures at Warn; nil discards.
	Logger *slog.Logger
	// RuleOptions are passed to rules.Compile, e.g. rules.WithTaskTypes
	// with the executor registry's names, so the rules API rejects what the
	// pipeline would reject.
	RuleOptions []rules.Option
	// Rules backs the rules CRUD endpoints and dry runs against the live
	// rule set; nil answers those endpoints with 501.
	Rules RuleStore
	// History backs the event timeline, task history and rule history
	// endpoints; nil answers them with 501.
	History History
	// DeadLetters backs the poison message endpoints; nil answers 501.
	DeadLetters DeadLetters
	// PoisonTopics are the poison topics the DLQ endpoints serve, and
	// PoisonSuffix what makes a topic's poison topic name.
	PoisonTopics []string
	PoisonSuffix string
	// TracerProvider, when set, traces every request but the probes and
	// scrapes, continuing an incoming W3C traceparent; the request context
	// holds the span, so published events carry it. nil traces nothing.
	TracerProvider trace.TracerProvider
}

// Server is the HTTP server. Create it with New.
type Server struct {
	cfg     Config
	deps    Deps
	log     *slog.Logger
	tokens  []namedToken
	parser  event.Parser
	handler http.Handler
}

// New validates cfg and deps and builds the server. It refuses a
// non-loopback listen address without a token: the rules API is code
// execution by another name.
func New(cfg Config, deps Deps) (*Server, error) {
	cfg.setDefaults()
	var errs []error
	if deps.Events == nil {
		errs = append(errs, errors.New("deps.Events is required"))
	}
	if deps.Gatherer == nil {
		errs = append(errs, errors.New("deps.Gatherer is required"))
	}
	if cfg.RequestTimeout >= cfg.WriteTimeout {
		errs = append(errs, fmt.Errorf("request timeout %s must be shorter than the write timeout %s, "+
			"or a late answer is never written", cfg.RequestTimeout, cfg.WriteTimeout))
	}
	tokens, err := hashTokens(cfg.Token, cfg.Tokens)
	if err != nil {
		errs = append(errs, err)
	}
	if err := checkListenAddr(cfg.Addr, len(tokens) > 0); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("invalid api config: %w", err)
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{
		cfg:    cfg,
		deps:   deps,
		log:    deps.Logger,
		tokens: tokens,
		parser: event.Parser{MaxBytes: cfg.MaxEventBytes},
	}
	s.handler = s.routes()
	return s, nil
}

// routes builds the handler tree. The chain, outermost first:
// recoverer (a panic becomes a 500 JSON answer, never a dropped connection),
// request log (sees the final status), auth (before routing, so unknown
// paths do not reveal themselves to unauthenticated writers), then the mux
// with JSON 404/405.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.handleHealthz)
	mux.HandleFunc("GET /readyz", s.handleReadyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.deps.Gatherer, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
		// Exemplars (trace ids on the duration histograms) exist only in
		// OpenMetrics, which Prometheus asks for; others still get text.
		EnableOpenMetrics: true,
	}))
	mux.HandleFunc("POST /api/v1/events", s.handleEvents)
	mux.HandleFunc("POST /api/v1/task-trigger-rules/test", s.handleRulesTest)
	mux.HandleFunc("GET /api/v1/task-trigger-rules", s.withStore(s.handleListRules))
	mux.HandleFunc("POST /api/v1/task-trigger-rules", s.withStore(s.handleCreateRule))
	mux.HandleFunc("GET /api/v1/task-trigger-rules/{ruleId}", s.withStore(s.handleGetRule))
	mux.HandleFunc("PUT /api/v1/task-trigger-rules/{ruleId}", s.withStore(s.handleUpdateRule))
	mux.HandleFunc("DELETE /api/v1/task-trigger-rules/{ruleId}", s.withStore(s.handleDeleteRule))
	mux.HandleFunc("POST /api/v1/task-trigger-rules/{ruleId}/enable", s.withStore(s.handleEnableRule(true)))
	mux.HandleFunc("POST /api/v1/task-trigger-rules/{ruleId}/disable", s.withStore(s.handleEnableRule(false)))
	mux.HandleFunc("GET /api/v1/task-trigger-rules/{ruleId}/history", s.withHistory(s.handleRuleHistory))
	mux.HandleFunc("POST /api/v1/task-trigger-rules/{ruleId}/rollback", s.withStore(s.withHistory(s.handleRollback)))
	mux.HandleFunc("GET /api/v1/events/{id}", s.withHistory(s.handleGetEvent))
	mux.HandleFunc("GET /api/v1/tasks/{id}", s.withHistory(s.handleGetTask))
	mux.HandleFunc("GET /api/v1/tasks", s.withHistory(s.handleListTasks))
	mux.HandleFunc("GET /api/v1/dlq", s.withDeadLetters(s.handleListPoison))
	mux.HandleFunc("POST /api/v1/dlq/replay", s.withDeadLetters(s.handleReplayPoison))
	s.routeConsole(mux)

	var h http.Handler = jsonMuxErrors(mux)
	h = s.authenticate(h)
	h = s.browserGuard(h)
	h = s.logRequests(h)
	h = s.withDeadline(h)
	h = s.recoverer(h)
	if tp := s.deps.TracerProvider; tp != nil {
		// Outermost, so the span covers the whole request and the log
		// lines of the layers inside carry its trace id.
		h = otelhttp.NewHandler(h, "eventpipe.http",
			otelhttp.WithTracerProvider(tp),
			otelhttp.WithPropagators(tracing.Propagator),
			otelhttp.WithFilter(func(r *http.Request) bool { return !untraced[r.URL.Path] }),
			otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + r.URL.Path }))
	}
	return h
}

// withDeadline gives every request the deadline Config.RequestTimeout, so
// handlers that wait (publish, dry-run slots) answer before the server's
// write timeout cuts the connection.
func (s *Server) withDeadline(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
		defer cancel()
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

// untraced are the paths probes and scrapers poll: spans of them would
// bury the traces of events.
var untraced = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// Handler returns the server's full handler, middleware included.
func (s *Server) Handler() http.Handler { return s.handler }

// ListenAndServe listens on Config.Addr and serves until ctx ends, then shuts
// down gracefully. It returns nil after a clean shutdown.
func (s *Server) ListenAndServe(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Addr, err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln until ctx ends, then stops accepting connections and
// waits up to Config.ShutdownTimeout for in-flight requests, so an event
// being published still gets its answer. It closes ln. It refuses a
// non-loopback listener without a token, like New.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if err := checkListenAddr(ln.Addr().String(), len(s.tokens) > 0); err != nil {
		_ = ln.Close()
		return err
	}
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve http on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	// The parent ctx is done; the shutdown gets its own deadline.
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		_ = srv.Close()
		<-serveErr
		return fmt.Errorf("shut down http server on %s: %w", ln.Addr(), err)
	}
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve http on %s: %w", ln.Addr(), err)
	}
	return nil
}

func (s *Server) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if s.deps.Readiness != nil {
		ctx, cancel := context.WithTimeout(r.Context(), DefaultReadyTimeout)
		defer cancel()
		if err := s.deps.Readiness.Ready(ctx); err != nil {
			writeError(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
