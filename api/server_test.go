package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/api"
)

const testToken = "s3cret-token"

// fakePublisher records published batches; err makes every publish fail.
type fakePublisher struct {
	mu      sync.Mutex
	batches [][]api.Ingested
	err     error
}

func (p *fakePublisher) PublishEvents(_ context.Context, events []api.Ingested) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	p.batches = append(p.batches, events)
	return nil
}

func (p *fakePublisher) published() []api.Ingested {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []api.Ingested
	for _, b := range p.batches {
		out = append(out, b...)
	}
	return out
}

func newServer(t *testing.T, cfg api.Config, deps api.Deps) *api.Server {
	t.Helper()
	if deps.Events == nil {
		deps.Events = &fakePublisher{}
	}
	if deps.Gatherer == nil {
		deps.Gatherer = prometheus.NewRegistry()
	}
	s, err := api.New(cfg, deps)
	require.NoError(t, err)
	return s
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// errorBody decodes the body as the JSON error shape.
func (r response) errorBody(t *testing.T) api.ErrorBody {
	t.Helper()
	var eb api.ErrorBody
	require.NoError(t, json.Unmarshal(r.body, &eb), "body: %s", r.body)
	require.NotEmpty(t, eb.Error, "body: %s", r.body)
	return eb
}

// details decodes the error details as EventDetails.
func (r response) details(t *testing.T) []api.EventDetail {
	t.Helper()
	var eb struct {
		Details []api.EventDetail `json:"details"`
	}
	require.NoError(t, json.Unmarshal(r.body, &eb), "body: %s", r.body)
	return eb.Details
}

func do(t testing.TB, h http.Handler, method, path, body string, header map[string]string) response {
	t.Helper()
	req := httptest.NewRequestWithContext(t.Context(), method, path, strings.NewReader(body))
	req.Host = "127.0.0.1:8080" // what a local client sends; the Host guard refuses others without a token
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
}

var jsonHeader = map[string]string{"Content-Type": "application/json"}

const (
	event1 = `{"messageId":"msg-1","eventType":"order.created","payload":{"amount":1500}}`
	event2 = `{"messageId":"msg-2","eventType":"order.paid","priority":"high"}`
)

func TestEvents_accepts_single_and_array_and_answers_ids(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		body        string
		contentType string
		wantIDs     []string
		wantRaw     []string
	}{
		{name: "single_event", body: event1, contentType: "application/json",
			wantIDs: []string{"msg-1"}, wantRaw: []string{event1}},
		{name: "array_of_two_in_order", body: "[" + event1 + ",\n " + event2 + "]", contentType: "application/json; charset=utf-8",
			wantIDs: []string{"msg-1", "msg-2"}, wantRaw: []string{event1, event2}},
		{name: "no_content_type", body: event2, contentType: "",
			wantIDs: []string{"msg-2"}, wantRaw: []string{event2}},
		{name: "cloudevents_content_type",
			body:        `{"specversion":"1.0","id":"ce-1","type":"order.created","source":"shop","data":{"a":1}}`,
			contentType: "application/cloudevents+json",
			wantIDs:     []string{"ce-1"},
			wantRaw:     []string{`{"specversion":"1.0","id":"ce-1","type":"order.created","source":"shop","data":{"a":1}}`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pub := &fakePublisher{}
			s := newServer(t, api.Config{}, api.Deps{Events: pub})
			header := map[string]string{}
			if tt.contentType != "" {
				header["Content-Type"] = tt.contentType
			}

			res := do(t, s.Handler(), http.MethodPost, "/api/v1/events", tt.body, header)

			require.Equal(t, http.StatusAccepted, res.status, "body: %s", res.body)
			var got api.AcceptedEvents
			require.NoError(t, json.Unmarshal(res.body, &got))
			assert.Equal(t, len(tt.wantIDs), got.Accepted)
			assert.Equal(t, tt.wantIDs, got.IDs)
			events := pub.published()
			require.Len(t, events, len(tt.wantRaw))
			for i, ev := range events {
				assert.Equal(t, tt.wantIDs[i], ev.ID)
				assert.JSONEq(t, tt.wantRaw[i], string(ev.Raw), "the raw event is published unchanged")
				require.NotNil(t, ev.Event)
				assert.Equal(t, tt.wantIDs[i], ev.Event.MessageID)
			}
		})
	}
}

func TestEvents_derives_id_when_message_id_is_missing(t *testing.T) {
	t.Parallel()
	s := newServer(t, api.Config{}, api.Deps{})
	body := `{"eventType":"order.created","payload":{"a":1}}`

	first := do(t, s.Handler(), http.MethodPost, "/api/v1/events", body, jsonHeader)
	second := do(t, s.Handler(), http.MethodPost, "/api/v1/events", body, jsonHeader)

	require.Equal(t, http.StatusAccepted, first.status, "body: %s", first.body)
	var a, b api.AcceptedEvents
	require.NoError(t, json.Unmarshal(first.body, &a))
	require.NoError(t, json.Unmarshal(second.body, &b))
	require.Len(t, a.IDs, 1)
	assert.NotEmpty(t, a.IDs[0])
	assert.Equal(t, a.IDs, b.IDs, "the same content yields the same id")
}

func TestEvents_rejects_invalid_events_naming_index_and_field(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		body        string
		wantError   string
		wantDetails []api.EventDetail // Error is checked with Contains
	}{
		{name: "second_event_without_event_type", body: "[" + event1 + `,{"messageId":"m","payload":{}}]`,
			wantError:   "invalid events",
			wantDetails: []api.EventDetail{{Index: 1, Field: "eventType", Error: "eventType"}}},
		{name: "single_event_with_array_payload", body: `{"eventType":"a.b","payload":[1,2]}`,
			wantError:   "invalid events",
			wantDetails: []api.EventDetail{{Index: 0, Field: "payload", Value: "[1,2]", Error: "JSON object"}}},
		{name: "every_problem_of_every_event_is_listed",
			body:      `[{"eventType":"a.b","priority":"urgent"},` + event1 + `,{"payload":"x"}]`,
			wantError: "invalid events",
			wantDetails: []api.EventDetail{
				{Index: 0, Field: "priority", Value: "urgent", Error: "urgent"},
				{Index: 2, Field: "eventType", Error: "eventType"},
				{Index: 2, Field: "payload", Value: "x", Error: "payload"},
			}},
		{name: "array_element_not_an_object", body: "[" + event1 + `,42]`,
			wantError:   "invalid events",
			wantDetails: []api.EventDetail{{Index: 1, Value: "42", Error: "must be a JSON object, got number"}}},
		{name: "invalid_json", body: `{"eventType":`, wantError: "invalid JSON"},
		{name: "empty_array", body: `[]`, wantError: "empty array"},
		{name: "scalar_body", body: `"hello"`, wantError: "JSON object or an array"},
		{name: "empty_body", body: ``, wantError: "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pub := &fakePublisher{}
			s := newServer(t, api.Config{}, api.Deps{Events: pub})

			res := do(t, s.Handler(), http.MethodPost, "/api/v1/events", tt.body, jsonHeader)

			require.Equal(t, http.StatusBadRequest, res.status, "body: %s", res.body)
			assert.Contains(t, res.errorBody(t).Error, tt.wantError)
			got := res.details(t)
			require.Len(t, got, len(tt.wantDetails), "body: %s", res.body)
			for i, want := range tt.wantDetails {
				assert.Equal(t, want.Index, got[i].Index, "detail %d", i)
				assert.Equal(t, want.Field, got[i].Field, "detail %d", i)
				assert.Contains(t, got[i].Error, want.Error, "detail %d", i)
				if want.Value != "" {
					assert.Equal(t, want.Value, got[i].Value, "detail %d", i)
				}
			}
			assert.Empty(t, pub.published(), "nothing is published when any event is invalid")
		})
	}
}

func TestEvents_enforces_size_limits(t *testing.T) {
	t.Parallel()
	big := `{"eventType":"a.b","payload":{"x":"` + strings.Repeat("y", 300) + `"}}`
	tests := []struct {
		name       string
		cfg        api.Config
		wantStatus int
		wantError  string
	}{
		{name: "body_over_limit_is_413", cfg: api.Config{MaxBodyBytes: 100},
			wantStatus: http.StatusRequestEntityTooLarge, wantError: "exceeds the limit of 100 bytes"},
		{name: "event_over_event_limit_is_400", cfg: api.Config{MaxEventBytes: 100},
			wantStatus: http.StatusBadRequest, wantError: "invalid events"},
		{name: "within_limits_is_accepted", cfg: api.Config{MaxBodyBytes: 1000, MaxEventBytes: 1000},
			wantStatus: http.StatusAccepted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newServer(t, tt.cfg, api.Deps{})

			res := do(t, s.Handler(), http.MethodPost, "/api/v1/events", big, jsonHeader)

			require.Equal(t, tt.wantStatus, res.status, "body: %s", res.body)
			if tt.wantError != "" {
				assert.Contains(t, res.errorBody(t).Error, tt.wantError)
			}
		})
	}
}

func TestEvents_rejects_non_json_content_type_with_415(t *testing.T) {
	t.Parallel()
	for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "application/xml", "not a media type;;"} {
		t.Run(ct, func(t *testing.T) {
			t.Parallel()
			pub := &fakePublisher{}
			s := newServer(t, api.Config{}, api.Deps{Events: pub})

			res := do(t, s.Handler(), http.MethodPost, "/api/v1/events", event1, map[string]string{"Content-Type": ct})

			require.Equal(t, http.StatusUnsupportedMediaType, res.status)
			assert.Contains(t, res.errorBody(t).Error, "application/json")
			assert.Empty(t, pub.published())
		})
	}
}

func TestEvents_answers_503_when_publish_fails(t *testing.T) {
	t.Parallel()
	pub := &fakePublisher{err: errors.New("broker unreachable")}
	s := newServer(t, api.Config{}, api.Deps{Events: pub})

	res := do(t, s.Handler(), http.MethodPost, "/api/v1/events", event1, jsonHeader)

	require.Equal(t, http.StatusServiceUnavailable, res.status)
	assert.Contains(t, res.errorBody(t).Error, "broker unreachable")
}

func TestAuth_requires_bearer_token_on_mutating_endpoints_and_rule_reads(t *testing.T) {
	t.Parallel()
	cfg := api.Config{Token: testToken, Tokens: map[string]string{"ci": "ci-token"}}
	tests := []struct {
		name       string
		cfg        api.Config
		method     string
		path       string
		auth       string
		wantStatus int
		wantError  string
	}{
		{name: "post_without_token", cfg: cfg, method: http.MethodPost, path: "/api/v1/events",
			wantStatus: http.StatusUnauthorized, wantError: "missing bearer token"},
		{name: "post_with_wrong_token", cfg: cfg, method: http.MethodPost, path: "/api/v1/events",
			auth: "Bearer nope", wantStatus: http.StatusUnauthorized, wantError: "invalid bearer token"},
		{name: "post_with_token_prefix", cfg: cfg, method: http.MethodPost, path: "/api/v1/events",
			auth: "Bearer " + testToken[:4], wantStatus: http.StatusUnauthorized, wantError: "invalid bearer token"},
		{name: "post_with_basic_auth", cfg: cfg, method: http.MethodPost, path: "/api/v1/events",
			auth: "Basic " + testToken, wantStatus: http.StatusUnauthorized, wantError: "missing bearer token"},
		{name: "post_with_token", cfg: cfg, method: http.MethodPost, path: "/api/v1/events",
			auth: "Bearer " + testToken, wantStatus: http.StatusAccepted},
		{name: "post_with_lowercase_scheme", cfg: cfg, method: http.MethodPost, path: "/api/v1/events",
			auth: "bearer " + testToken, wantStatus: http.StatusAccepted},
		{name: "post_with_named_token", cfg: cfg, method: http.MethodPost, path: "/api/v1/events",
			auth: "Bearer ci-token", wantStatus: http.StatusAccepted},
		{name: "unknown_path_does_not_reveal_itself", cfg: cfg, method: http.MethodDelete, path: "/nope",
			wantStatus: http.StatusUnauthorized, wantError: "missing bearer token"},
		{name: "get_needs_no_token", cfg: cfg, method: http.MethodGet, path: "/healthz",
			wantStatus: http.StatusOK},
		{name: "metrics_needs_no_token", cfg: cfg, method: http.MethodGet, path: "/metrics",
			wantStatus: http.StatusOK},
		{name: "reading_rules_needs_the_token", cfg: cfg, method: http.MethodGet, path: "/api/v1/task-trigger-rules/r1",
			wantStatus: http.StatusUnauthorized, wantError: "missing bearer token"},
		{name: "listing_rules_needs_the_token", cfg: cfg, method: http.MethodGet, path: "/api/v1/task-trigger-rules?page=0",
			wantStatus: http.StatusUnauthorized, wantError: "missing bearer token"},
		{name: "reading_rules_with_token", cfg: cfg, method: http.MethodGet, path: "/api/v1/task-trigger-rules",
			auth: "Bearer " + testToken, wantStatus: http.StatusNotImplemented}, // no rule store in this test
		{name: "no_token_configured_post_is_open", cfg: api.Config{}, method: http.MethodPost, path: "/api/v1/events",
			wantStatus: http.StatusAccepted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pub := &fakePublisher{}
			s := newServer(t, tt.cfg, api.Deps{Events: pub})
			header := map[string]string{"Content-Type": "application/json"}
			if tt.auth != "" {
				header["Authorization"] = tt.auth
			}

			res := do(t, s.Handler(), tt.method, tt.path, event1, header)

			require.Equal(t, tt.wantStatus, res.status, "body: %s", res.body)
			if tt.wantStatus == http.StatusUnauthorized {
				assert.True(t, strings.HasPrefix(res.header.Get("WWW-Authenticate"), "Bearer"),
					"WWW-Authenticate: %q", res.header.Get("WWW-Authenticate"))
				assert.Contains(t, res.errorBody(t).Error, tt.wantError)
				assert.Empty(t, pub.published())
			}
		})
	}
}

func TestNew_refuses_non_loopback_address_without_token(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		addr    string
		token   string
		wantErr string
	}{
		{name: "all_interfaces_ipv4", addr: "0.0.0.0:8080", wantErr: "non-loopback"},
		{name: "all_interfaces_empty_host", addr: ":8080", wantErr: "non-loopback"},
		{name: "all_interfaces_ipv6", addr: "[::]:8080", wantErr: "non-loopback"},
		{name: "public_ip", addr: "10.1.2.3:8080", wantErr: "non-loopback"},
		{name: "host_name", addr: "example.com:8080", wantErr: "non-loopback"},
		{name: "all_interfaces_with_token", addr: "0.0.0.0:8080", token: testToken},
		{name: "default_address", addr: ""},
		{name: "loopback_ipv4", addr: "127.0.0.1:8080"},
		{name: "loopback_ipv4_range", addr: "127.3.4.5:0"},
		{name: "loopback_ipv6", addr: "[::1]:8080"},
		{name: "localhost", addr: "localhost:8080"},
		{name: "localhost_any_case", addr: "LocalHost:8080"},
		{name: "missing_port", addr: "127.0.0.1", wantErr: "missing port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := api.New(api.Config{Addr: tt.addr, Token: tt.token},
				api.Deps{Events: &fakePublisher{}, Gatherer: prometheus.NewRegistry()})
			if tt.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
			if tt.addr != "127.0.0.1" {
				assert.Contains(t, err.Error(), tt.addr, "the error names the address")
				assert.Contains(t, err.Error(), "token", "the error says how to fix it")
			}
		})
	}
}

func TestNew_rejects_invalid_config_naming_each_problem(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		cfg      api.Config
		deps     api.Deps
		wantErrs []string
	}{
		{name: "missing_dependencies", deps: api.Deps{},
			wantErrs: []string{"deps.Events is required", "deps.Gatherer is required"}},
		{name: "empty_named_token", cfg: api.Config{Tokens: map[string]string{"ci": ""}},
			wantErrs: []string{`tokens["ci"]: the token is empty`}},
		{name: "token_with_whitespace", cfg: api.Config{Token: "abc def"},
			wantErrs: []string{`tokens["default"]: the token contains whitespace`}},
		{name: "token_with_empty_name", cfg: api.Config{Tokens: map[string]string{" ": "x"}},
			wantErrs: []string{"empty name"}},
		{name: "token_conflicts_with_default_name", cfg: api.Config{Token: "a", Tokens: map[string]string{"default": "b"}},
			wantErrs: []string{`tokens["default"] conflicts with token`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			deps := tt.deps
			if len(tt.wantErrs) == 1 {
				deps = api.Deps{Events: &fakePublisher{}, Gatherer: prometheus.NewRegistry()}
			}
			_, err := api.New(tt.cfg, deps)
			require.Error(t, err)
			for _, want := range tt.wantErrs {
				assert.Contains(t, err.Error(), want)
			}
			assert.NotContains(t, err.Error(), "abc def", "a token value is never echoed")
		})
	}
}

func TestHealth_and_readiness(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		readiness  api.Readiness
		path       string
		wantStatus int
		wantBody   string
	}{
		{name: "healthz_ok", path: "/healthz", wantStatus: http.StatusOK, wantBody: `{"status":"ok"}`},
		{name: "healthz_ok_even_when_not_ready", path: "/healthz",
			readiness:  api.ReadinessFunc(func(context.Context) error { return errors.New("router stopped") }),
			wantStatus: http.StatusOK, wantBody: `{"status":"ok"}`},
		{name: "readyz_without_readiness_is_ready", path: "/readyz", wantStatus: http.StatusOK, wantBody: `{"status":"ready"}`},
		{name: "readyz_ready", path: "/readyz",
			readiness:  api.ReadinessFunc(func(context.Context) error { return nil }),
			wantStatus: http.StatusOK, wantBody: `{"status":"ready"}`},
		{name: "readyz_not_ready_names_reason", path: "/readyz",
			readiness:  api.ReadinessFunc(func(context.Context) error { return errors.New("broker unreachable") }),
			wantStatus: http.StatusServiceUnavailable, wantBody: `{"error":"not ready: broker unreachable"}`},
		{name: "readyz_check_is_bounded_in_time", path: "/readyz",
			readiness: api.ReadinessFunc(func(ctx context.Context) error {
				if _, ok := ctx.Deadline(); !ok {
					return errors.New("no deadline")
				}
				return nil
			}),
			wantStatus: http.StatusOK, wantBody: `{"status":"ready"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newServer(t, api.Config{}, api.Deps{Readiness: tt.readiness})

			res := do(t, s.Handler(), http.MethodGet, tt.path, "", nil)

			assert.Equal(t, tt.wantStatus, res.status)
			assert.JSONEq(t, tt.wantBody, string(res.body))
			assert.Equal(t, "application/json; charset=utf-8", res.header.Get("Content-Type"))
		})
	}
}

func TestMetrics_exposes_registered_collectors(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	processed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "message_processed_total", Help: "Messages processed.",
	}, []string{"handler"})
	reg.MustRegister(processed)
	processed.WithLabelValues("trigger").Add(3)
	s := newServer(t, api.Config{Token: testToken}, api.Deps{Gatherer: reg})

	res := do(t, s.Handler(), http.MethodGet, "/metrics", "", nil)

	require.Equal(t, http.StatusOK, res.status)
	assert.Contains(t, string(res.body), `message_processed_total{handler="trigger"} 3`)
}

func TestMux_errors_are_json(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		method     string
		path       string
		wantStatus int
		wantAllow  string
		wantError  string
	}{
		{name: "unknown_path", method: http.MethodGet, path: "/nope", wantStatus: http.StatusNotFound,
			wantError: "no endpoint /nope"},
		{name: "get_on_post_endpoint", method: http.MethodGet, path: "/api/v1/events",
			wantStatus: http.StatusMethodNotAllowed, wantAllow: "POST", wantError: "method GET not allowed on /api/v1/events"},
		{name: "post_on_get_endpoint", method: http.MethodPost, path: "/healthz",
			wantStatus: http.StatusMethodNotAllowed, wantAllow: "GET, HEAD", wantError: "method POST not allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newServer(t, api.Config{}, api.Deps{})

			res := do(t, s.Handler(), tt.method, tt.path, "", nil)

			require.Equal(t, tt.wantStatus, res.status)
			assert.Equal(t, "application/json; charset=utf-8", res.header.Get("Content-Type"))
			assert.Contains(t, res.errorBody(t).Error, tt.wantError)
			assert.Equal(t, tt.wantAllow, res.header.Get("Allow"))
		})
	}
}

// panicPublisher panics, as a buggy dependency might.
type panicPublisher struct{}

func (panicPublisher) PublishEvents(context.Context, []api.Ingested) error { panic("boom") }

func TestServer_answers_500_json_when_a_handler_panics(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	s := newServer(t, api.Config{}, api.Deps{Events: panicPublisher{},
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})

	res := do(t, s.Handler(), http.MethodPost, "/api/v1/events", event1, jsonHeader)

	require.Equal(t, http.StatusInternalServerError, res.status)
	assert.Equal(t, "internal error", res.errorBody(t).Error)
	assert.Contains(t, logs.String(), "boom")
}

func TestServer_logs_requests_at_debug_only(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		level   slog.Level
		wantLog bool
	}{
		{name: "debug_level_logs_each_request", level: slog.LevelDebug, wantLog: true},
		{name: "info_level_logs_nothing", level: slog.LevelInfo, wantLog: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var logs bytes.Buffer
			s := newServer(t, api.Config{Token: testToken}, api.Deps{
				Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: tt.level}))})

			res := do(t, s.Handler(), http.MethodPost, "/api/v1/events", event1,
				map[string]string{"Authorization": "Bearer " + testToken})
			require.Equal(t, http.StatusAccepted, res.status)

			if !tt.wantLog {
				assert.Empty(t, logs.String())
				return
			}
			var rec map[string]any
			require.NoError(t, json.Unmarshal(logs.Bytes(), &rec), "log: %s", logs.String())
			assert.Equal(t, "DEBUG", rec["level"])
			assert.Equal(t, "POST", rec["method"])
			assert.Equal(t, "/api/v1/events", rec["path"])
			assert.EqualValues(t, http.StatusAccepted, rec["status"])
			assert.Contains(t, rec, "duration")
			assert.Equal(t, "default", rec["token_name"])
			assert.NotContains(t, logs.String(), testToken, "the token itself is never logged")
		})
	}
}

// blockingPublisher holds each publish until release is closed.
type blockingPublisher struct {
	started chan struct{}
	release chan struct{}
}

func (p *blockingPublisher) PublishEvents(ctx context.Context, _ []api.Ingested) error {
	close(p.started)
	select {
	case <-p.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestServe_finishes_in_flight_requests_on_shutdown(t *testing.T) {
	t.Parallel()
	pub := &blockingPublisher{started: make(chan struct{}), release: make(chan struct{})}
	s := newServer(t, api.Config{ShutdownTimeout: 5 * time.Second}, api.Deps{Events: pub})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()

	type result struct {
		status int
		err    error
	}
	answered := make(chan result, 1)
	go func() {
		resp, err := http.Post("http://"+ln.Addr().String()+"/api/v1/events", "application/json", strings.NewReader(event1))
		if err != nil {
			answered <- result{err: err}
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		answered <- result{status: resp.StatusCode}
	}()
	<-pub.started
	cancel()
	// Serve must wait for the in-flight publish rather than return.
	select {
	case err := <-served:
		t.Fatalf("Serve returned %v before the in-flight request finished", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(pub.release)

	got := <-answered
	require.NoError(t, got.err)
	assert.Equal(t, http.StatusAccepted, got.status)
	assert.NoError(t, <-served)
	_, err = net.Dial("tcp", ln.Addr().String())
	assert.Error(t, err, "the listener is closed after shutdown")
}

func TestServe_refuses_non_loopback_listener_without_token(t *testing.T) {
	t.Parallel()
	s := newServer(t, api.Config{}, api.Deps{})
	ln, err := net.Listen("tcp", ":0") // every interface
	require.NoError(t, err)

	err = s.Serve(t.Context(), ln)

	require.Error(t, err)
	assert.Contains(t, err.Error(), "non-loopback")
}

func TestListenAndServe_stops_cleanly_when_context_ends(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		addr    string
		wantErr string
	}{
		{name: "loopback_port_zero", addr: "127.0.0.1:0"},
		{name: "unusable_address", addr: "127.0.0.1:99999", wantErr: "listen on 127.0.0.1:99999"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newServer(t, api.Config{Addr: tt.addr}, api.Deps{})
			ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
			defer cancel()

			err := s.ListenAndServe(ctx)

			if tt.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

func TestServer_refuses_browser_cross_site_writes_and_dns_rebinding(t *testing.T) {
	t.Parallel()
	rule := `{"ruleId":"evil","eventType":"#","taskType":"log"}`
	tests := []struct {
		name   string
		token  string
		header map[string]string
		want   int
	}{
		{name: "cross_site_fetch_without_content_type", header: map[string]string{"Sec-Fetch-Site": "cross-site"}, want: http.StatusForbidden},
		{name: "foreign_origin", header: map[string]string{"Origin": "https://evil.example", "Content-Type": "application/json"}, want: http.StatusForbidden},
		{name: "dns_rebinding_host_without_token", header: map[string]string{"Host": "evil.example:8080", "Content-Type": "application/json"}, want: http.StatusForbidden},
		{name: "same_origin_local_client", header: map[string]string{"Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}, want: http.StatusCreated},
		{name: "curl_without_browser_headers", header: map[string]string{"Content-Type": "application/json"}, want: http.StatusCreated},
		{name: "any_host_with_token", token: "s3cret", header: map[string]string{"Host": "eventpipe.internal", "Authorization": "Bearer s3cret",
			"Content-Type": "application/json"}, want: http.StatusCreated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newRulesFixture(t, api.Config{Token: tt.token})
			got := do(t, f.handler, http.MethodPost, "/api/v1/task-trigger-rules", rule, tt.header)
			assert.Equal(t, tt.want, got.status, string(got.body))
		})
	}
}
