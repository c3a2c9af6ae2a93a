package executor_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/permanent"
)

func newHTTP(t *testing.T, cfg executor.HTTPConfig) executor.Executor {
	t.Helper()
	e, err := executor.NewHTTP(cfg)
	require.NoError(t, err)
	return e
}

// localAllowed is the config that lets tasks reach an httptest server.
var localAllowed = executor.HTTPConfig{AllowedHosts: []string{"127.0.0.1"}, AllowPrivateNetworks: true}

// recorded is what a test server saw of one request.
type recorded struct {
	method string
	header http.Header
	body   string
}

// newServer starts a server that records each request and answers with h.
func newServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, <-chan recorded, *atomic.Int64) {
	t.Helper()
	reqs := make(chan recorded, 16)
	var count atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		count.Add(1)
		body, _ := io.ReadAll(r.Body)
		select {
		case reqs <- recorded{method: r.Method, header: r.Header.Clone(), body: string(body)}:
		default:
		}
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, reqs, &count
}

func status(code int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}
}

func TestHTTP_sends_idempotency_key_user_agent_and_json_body(t *testing.T) {
	t.Parallel()
	srv, reqs, _ := newServer(t, status(http.StatusOK, `{"ok":true}`))
	e := newHTTP(t, localAllowed)
	tk := newTask(map[string]any{
		"url":     srv.URL + "/hooks/order",
		"headers": map[string]any{"X-Request-Source": "eventpipe-test", "authorization": "Bearer t0k"},
		"body":    map[string]any{"orderId": "order-12345", "amount": 999.99, "items": []any{"a", "b"}},
	})

	out, err := e.Execute(t.Context(), tk)

	require.NoError(t, err)
	assert.Equal(t, `{"ok":true}`, string(out))
	got := <-reqs
	assert.Equal(t, http.MethodPost, got.method, "a body defaults the method to POST")
	assert.Equal(t, tk.TaskID, got.header.Get("Idempotency-Key"))
	assert.Equal(t, "eventpipe", got.header.Get("User-Agent"))
	assert.Equal(t, "application/json", got.header.Get("Content-Type"))
	assert.Equal(t, "eventpipe-test", got.header.Get("X-Request-Source"))
	assert.Equal(t, "Bearer t0k", got.header.Get("Authorization"))
	assert.JSONEq(t, `{"orderId":"order-12345","amount":999.99,"items":["a","b"]}`, got.body)
}

func TestHTTP_method_and_body_forms(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name            string
		params          map[string]any
		wantMethod      string
		wantBody        string
		wantContentType string
	}{
		{name: "no body defaults to GET", params: map[string]any{}, wantMethod: "GET"},
		{name: "array body is JSON", params: map[string]any{"body": []any{1.0, "x"}},
			wantMethod: "POST", wantBody: `[1,"x"]`, wantContentType: "application/json"},
		{name: "string body is sent as is", params: map[string]any{"body": "a=1&b=2", "method": "put",
			"headers": map[string]any{"Content-Type": "application/x-www-form-urlencoded"}},
			wantMethod: "PUT", wantBody: "a=1&b=2", wantContentType: "application/x-www-form-urlencoded"},
		{name: "explicit content type wins over JSON", params: map[string]any{"body": map[string]any{"a": 1.0},
			"headers": map[string]any{"content-type": "application/vnd.api+json"}},
			wantMethod: "POST", wantBody: `{"a":1}`, wantContentType: "application/vnd.api+json"},
		{name: "DELETE without body", params: map[string]any{"method": "DELETE"}, wantMethod: "DELETE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, reqs, _ := newServer(t, status(http.StatusNoContent, ""))
			tt.params["url"] = srv.URL
			e := newHTTP(t, localAllowed)

			_, err := e.Execute(t.Context(), newTask(tt.params))

			require.NoError(t, err)
			got := <-reqs
			assert.Equal(t, tt.wantMethod, got.method)
			assert.Equal(t, tt.wantBody, got.body)
			assert.Equal(t, tt.wantContentType, got.header.Get("Content-Type"))
		})
	}
}

func TestHTTP_classifies_answers_by_status(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		code          int
		expect        any // parameters.expectStatus; nil = default
		wantErr       bool
		wantPermanent bool
	}{
		{name: "200 succeeds", code: 200},
		{name: "202 succeeds", code: 202},
		{name: "404 is permanent", code: 404, wantErr: true, wantPermanent: true},
		{name: "400 is permanent", code: 400, wantErr: true, wantPermanent: true},
		{name: "408 is retryable", code: 408, wantErr: true},
		{name: "429 is retryable", code: 429, wantErr: true},
		{name: "500 is retryable", code: 500, wantErr: true},
		{name: "503 is retryable", code: 503, wantErr: true},
		{name: "expected 201 got 201", code: 201, expect: 201.0},
		{name: "expected 201 got 200 is permanent", code: 200, expect: 201.0, wantErr: true, wantPermanent: true},
		{name: "404 in the expected list succeeds", code: 404, expect: []any{200.0, 404.0}},
		{name: "503 not in the expected list is retryable", code: 503, expect: []any{200.0, 404.0}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, _, _ := newServer(t, status(tt.code, "answer-"+strconv.Itoa(tt.code)))
			e := newHTTP(t, localAllowed)
			params := map[string]any{"url": srv.URL}
			if tt.expect != nil {
				params["expectStatus"] = tt.expect
			}

			out, err := e.Execute(t.Context(), newTask(params))

			assert.Equal(t, "answer-"+strconv.Itoa(tt.code), string(out), "the body is the output either way")
			if !tt.wantErr {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Equal(t, tt.wantPermanent, permanent.Is(err), "permanent.Is(%v)", err)
			assert.Contains(t, err.Error(), "unexpected status "+strconv.Itoa(tt.code))
			assert.Contains(t, err.Error(), "body: answer-"+strconv.Itoa(tt.code))
		})
	}
}

func TestHTTP_refuses_non_public_addresses_unless_allowed(t *testing.T) {
	t.Parallel()
	srv, _, count := newServer(t, status(http.StatusOK, "reached"))
	port := mustPort(t, srv.URL)
	tests := []struct {
		name    string
		url     string
		wantErr string
	}{
		{name: "loopback httptest server", url: srv.URL, wantErr: "refusing to dial 127.0.0.1"},
		{name: "name resolving to loopback", url: "http://localhost:" + port, wantErr: "refusing to dial"},
		{name: "IPv4-mapped loopback", url: "http://[::ffff:127.0.0.1]:" + port, wantErr: "refusing to dial 127.0.0.1"},
		{name: "IPv6 loopback", url: "http://[::1]:" + port, wantErr: "refusing to dial ::1"},
		{name: "cloud metadata", url: "http://169.254.169.254/latest/meta-data/", wantErr: "refusing to dial 169.254.169.254"},
		{name: "RFC1918", url: "http://10.0.0.1/", wantErr: "refusing to dial 10.0.0.1"},
		{name: "CGNAT", url: "http://100.64.0.1/", wantErr: "refusing to dial 100.64.0.1"},
		{name: "unspecified", url: "http://0.0.0.0:" + port, wantErr: "refusing to dial 0.0.0.0"},
		{name: "IPv6 unique local", url: "http://[fd00::1]/", wantErr: "refusing to dial fd00::1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newHTTP(t, executor.HTTPConfig{AllowedHosts: []string{"*"}})

			out, err := e.Execute(t.Context(), newTask(map[string]any{"url": tt.url}))

			require.Error(t, err)
			assert.True(t, permanent.Is(err), "a refused address is permanent: %v", err)
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.Empty(t, out)
		})
	}
	t.Run("allowed with AllowPrivateNetworks", func(t *testing.T) {
		e := newHTTP(t, executor.HTTPConfig{AllowedHosts: []string{"*"}, AllowPrivateNetworks: true})

		out, err := e.Execute(t.Context(), newTask(map[string]any{"url": srv.URL}))

		require.NoError(t, err)
		assert.Equal(t, "reached", string(out))
	})
	// Subtests above run after this function returns; check the count in cleanup.
	t.Cleanup(func() { assert.EqualValues(t, 1, count.Load(), "only the allowed request reaches the server") })
}

func mustPort(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	require.NoError(t, err)
	return u.Port()
}

func TestHTTP_refuses_hosts_not_on_the_allowlist(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		allowed []string
		url     string
	}{
		{name: "empty allowlist refuses everything", allowed: nil, url: "https://api.example.com/x"},
		{name: "exact name does not match another", allowed: []string{"api.example.com"}, url: "https://evil.com/x"},
		{name: "exact name does not match a subdomain", allowed: []string{"example.com"}, url: "https://api.example.com/x"},
		{name: "wildcard does not match the bare domain", allowed: []string{"*.example.com"}, url: "https://example.com/x"},
		{name: "wildcard does not match a lookalike", allowed: []string{"*.example.com"}, url: "https://api.example.com.evil.com/x"},
		{name: "userinfo does not fool the match", allowed: []string{"api.example.com"}, url: "https://api.example.com@evil.com/x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newHTTP(t, executor.HTTPConfig{AllowedHosts: tt.allowed})

			_, err := e.Execute(t.Context(), newTask(map[string]any{"url": tt.url}))

			require.Error(t, err)
			assert.True(t, permanent.Is(err))
			host := mustHost(t, tt.url)
			assert.Contains(t, err.Error(), `host "`+host+`" is not on the http allowlist`)
		})
	}
}

func mustHost(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	require.NoError(t, err)
	return u.Hostname()
}

func TestHTTP_redirects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		location      func(srvURL string, n int) string // where request n redirects; "" answers 200
		wantErr       string
		wantRequests  int64
		wantPermanent bool
	}{
		{
			name: "five redirects within the allowlist are followed",
			location: func(srvURL string, n int) string {
				if n < 5 {
					return srvURL + "/r/" + strconv.Itoa(n+1)
				}
				return ""
			},
			wantRequests: 6,
		},
		{
			name:          "a sixth redirect is refused",
			location:      func(srvURL string, n int) string { return srvURL + "/r/" + strconv.Itoa(n+1) },
			wantErr:       "stopped after 5 redirects",
			wantRequests:  6,
			wantPermanent: true,
		},
		{
			name:          "redirect to a host not on the allowlist is refused",
			location:      func(string, int) string { return "http://evil.example.com/steal" },
			wantErr:       `redirect to http://evil.example.com/steal: host "evil.example.com" is not on the http allowlist`,
			wantRequests:  1,
			wantPermanent: true,
		},
		{
			name:          "redirect to another scheme is refused",
			location:      func(string, int) string { return "file:///etc/passwd" },
			wantErr:       `scheme "file" is not allowed`,
			wantRequests:  1,
			wantPermanent: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, _, count := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				n, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/r/"))
				if loc := tt.location("http://"+r.Host, n); loc != "" {
					http.Redirect(w, r, loc, http.StatusFound)
					return
				}
				_, _ = io.WriteString(w, "arrived")
			})
			e := newHTTP(t, localAllowed)

			out, err := e.Execute(t.Context(), newTask(map[string]any{"url": srv.URL + "/r/0"}))

			assert.Equal(t, tt.wantRequests, count.Load())
			if tt.wantErr == "" {
				require.NoError(t, err)
				assert.Equal(t, "arrived", string(out))
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.Equal(t, tt.wantPermanent, permanent.Is(err))
		})
	}
}

func TestHTTP_redirect_to_another_host_drops_the_task_headers(t *testing.T) {
	t.Parallel()
	other, otherReqs, _ := newServer(t, status(http.StatusOK, "arrived"))
	same, sameReqs, _ := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/elsewhere" {
			http.Redirect(w, r, other.URL+"/landing", http.StatusTemporaryRedirect)
			return
		}
		if r.URL.Path == "/here" {
			http.Redirect(w, r, "/arrived", http.StatusTemporaryRedirect)
			return
		}
		_, _ = io.WriteString(w, "arrived")
	})
	e := newHTTP(t, localAllowed)
	headers := map[string]any{"X-Api-Key": "s3cret", "Authorization": "Bearer t0k"}

	_, err := e.Execute(t.Context(), newTask(map[string]any{"url": same.URL + "/here", "headers": headers}))
	require.NoError(t, err)
	<-sameReqs
	got := <-sameReqs
	assert.Equal(t, "s3cret", got.header.Get("X-Api-Key"), "same host: the task's headers stay")

	tk := newTask(map[string]any{"url": same.URL + "/elsewhere", "headers": headers, "body": map[string]any{"a": 1}})
	_, err = e.Execute(t.Context(), tk)
	require.NoError(t, err)
	got = <-otherReqs
	assert.Empty(t, got.header.Get("X-Api-Key"))
	assert.Empty(t, got.header.Get("Authorization"))
	assert.Equal(t, tk.TaskID, got.header.Get("Idempotency-Key"), "eventpipe's own headers stay")
	assert.Equal(t, "application/json", got.header.Get("Content-Type"))
}

func TestHTTP_bounds_the_response_body(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("z", 100_000)
	tests := []struct {
		name    string
		max     int64
		wantOut string
	}{
		{name: "configured limit", max: 1000, wantOut: big[:1000] + "…[truncated]"},
		{name: "default limit is 64 KiB", max: 0, wantOut: big[:65536] + "…[truncated]"},
		{name: "body at the limit is whole", max: 100_000, wantOut: big},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, _, _ := newServer(t, status(http.StatusOK, big))
			cfg := localAllowed
			cfg.MaxResponseBytes = tt.max
			e := newHTTP(t, cfg)

			out, err := e.Execute(t.Context(), newTask(map[string]any{"url": srv.URL}))

			require.NoError(t, err)
			assert.Equal(t, tt.wantOut, string(out))
		})
	}
}

func TestHTTP_timeout_is_retryable(t *testing.T) {
	t.Parallel()
	srv, _, _ := newServer(t, func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	e := newHTTP(t, localAllowed)

	_, err := e.Execute(t.Context(), newTask(map[string]any{"url": srv.URL, "timeout": 0.2}))

	require.Error(t, err)
	assert.False(t, permanent.Is(err))
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), "timed out after 200ms")
}

func TestHTTP_caller_cancel_returns_context_error(t *testing.T) {
	t.Parallel()
	srv, _, _ := newServer(t, func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	e := newHTTP(t, localAllowed)
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(100*time.Millisecond, cancel)

	_, err := e.Execute(ctx, newTask(map[string]any{"url": srv.URL}))

	require.Error(t, err)
	assert.ErrorIs(t, err, context.Canceled)
	assert.False(t, permanent.Is(err))
}

func TestHTTP_connection_refused_is_retryable(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	e := newHTTP(t, localAllowed)

	_, err = e.Execute(t.Context(), newTask(map[string]any{"url": "http://" + addr}))

	require.Error(t, err)
	assert.False(t, permanent.Is(err), "%v", err)
	assert.Contains(t, err.Error(), "connection refused")
}

func TestHTTP_rejects_bad_parameters(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		params  map[string]any
		wantErr string
	}{
		{name: "missing url", params: map[string]any{}, wantErr: "parameters.url: is required"},
		{name: "url not a string", params: map[string]any{"url": 1.0}, wantErr: "parameters.url: want a string, got number"},
		{name: "unparsable url", params: map[string]any{"url": "http://a b/"}, wantErr: "parameters.url: "},
		{name: "ftp url", params: map[string]any{"url": "ftp://api.example.com/x"}, wantErr: `parameters.url: scheme "ftp" is not allowed`},
		{name: "url without host", params: map[string]any{"url": "http:///x"}, wantErr: "parameters.url: url has no host"},
		{name: "unknown method", params: map[string]any{"method": "TRACE"}, wantErr: `parameters.method: "TRACE" is not one of GET, HEAD`},
		{name: "method not a string", params: map[string]any{"method": true}, wantErr: "parameters.method: want a string, got bool"},
		{name: "headers not an object", params: map[string]any{"headers": []any{"a"}}, wantErr: "parameters.headers: want an object of strings, got array"},
		{name: "header value not a string", params: map[string]any{"headers": map[string]any{"X-N": 1.0}}, wantErr: "parameters.headers.X-N: want a string, got number"},
		{name: "Host override", params: map[string]any{"headers": map[string]any{"host": "internal"}}, wantErr: "parameters.headers.host: Host is set by the executor"},
		{name: "Content-Length override", params: map[string]any{"headers": map[string]any{"Content-Length": "1"}}, wantErr: "Content-Length is set by the executor"},
		{name: "Idempotency-Key override", params: map[string]any{"headers": map[string]any{"idempotency-key": "x"}}, wantErr: "Idempotency-Key is set by the executor"},
		{name: "invalid header name", params: map[string]any{"headers": map[string]any{"Bad Header": "x"}}, wantErr: `"Bad Header" is not a valid header name`},
		{name: "header injection", params: map[string]any{"headers": map[string]any{"X-A": "a\r\nX-B: b"}}, wantErr: "parameters.headers.X-A: value contains CR, LF or NUL"},
		{name: "number body", params: map[string]any{"body": 5.0}, wantErr: "parameters.body: want an object, array or string, got number"},
		{name: "status out of range", params: map[string]any{"expectStatus": 99.0}, wantErr: `parameters.expectStatus: want an HTTP status code (100-599), got number "99"`},
		{name: "status as string", params: map[string]any{"expectStatus": "200"}, wantErr: `parameters.expectStatus: want an HTTP status code (100-599), got string "200"`},
		{name: "fractional status", params: map[string]any{"expectStatus": 200.5}, wantErr: "parameters.expectStatus: want an HTTP status code"},
		{name: "empty status list", params: map[string]any{"expectStatus": []any{}}, wantErr: "parameters.expectStatus: is an empty list"},
		{name: "bad status in list names its index", params: map[string]any{"expectStatus": []any{200.0, 700.0}}, wantErr: `parameters.expectStatus[1]: want an HTTP status code (100-599), got number "700"`},
		{name: "zero timeout", params: map[string]any{"timeout": 0.0}, wantErr: "parameters.timeout: want a positive number of seconds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, ok := tt.params["url"]; !ok && tt.name != "missing url" {
				tt.params["url"] = "https://api.example.com/x"
			}
			e := newHTTP(t, executor.HTTPConfig{AllowedHosts: []string{"api.example.com"}})

			_, err := e.Execute(t.Context(), newTask(tt.params))

			require.Error(t, err)
			assert.True(t, permanent.Is(err), "bad parameters are permanent: %v", err)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

func TestHTTP_nil_task_is_permanent(t *testing.T) {
	t.Parallel()
	e := newHTTP(t, executor.HTTPConfig{})

	_, err := e.Execute(t.Context(), nil)

	assert.True(t, permanent.Is(err))
}

func TestHTTP_accepts_expectStatus_from_go_callers_as_int(t *testing.T) {
	t.Parallel()
	srv, _, _ := newServer(t, status(http.StatusAccepted, ""))
	e := newHTTP(t, localAllowed)

	_, err := e.Execute(t.Context(), newTask(map[string]any{"url": srv.URL, "expectStatus": http.StatusAccepted}))

	assert.NoError(t, err)
}

func TestNewHTTP_rejects_bad_config(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     executor.HTTPConfig
		wantErr string
	}{
		{name: "URL as host", cfg: executor.HTTPConfig{AllowedHosts: []string{"https://api.example.com"}},
			wantErr: `http.allowed_hosts[0] "https://api.example.com": want a hostname, "*.domain" or "*"`},
		{name: "host with port", cfg: executor.HTTPConfig{AllowedHosts: []string{"ok.com", "api.example.com:443"}},
			wantErr: `http.allowed_hosts[1] "api.example.com:443"`},
		{name: "empty host", cfg: executor.HTTPConfig{AllowedHosts: []string{""}}, wantErr: `http.allowed_hosts[0] ""`},
		{name: "wildcard in the middle", cfg: executor.HTTPConfig{AllowedHosts: []string{"api.*.com"}}, wantErr: `"api.*.com"`},
		{name: "partial wildcard", cfg: executor.HTTPConfig{AllowedHosts: []string{"*api.example.com"}}, wantErr: `"*api.example.com"`},
		{name: "bare wildcard dot", cfg: executor.HTTPConfig{AllowedHosts: []string{"*."}}, wantErr: `"*."`},
		{name: "negative timeout", cfg: executor.HTTPConfig{DefaultTimeout: -1}, wantErr: "http.default_timeout must be >= 0, got -1ns"},
		{name: "negative body limit", cfg: executor.HTTPConfig{MaxResponseBytes: -5}, wantErr: "http.max_response_bytes must be >= 0, got -5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, err := executor.NewHTTP(tt.cfg)

			assert.Nil(t, e)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}
