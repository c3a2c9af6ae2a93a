package executor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/propagation"

	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/task"
)

// HTTP defaults.
const (
	DefaultHTTPTimeout          = 30 * time.Second
	DefaultHTTPMaxResponseBytes = 64 << 10
)

// maxRedirects is how many redirects one task may follow.
const maxRedirects = 5

// errSnippetBytes is how much of a response body an error message carries.
const errSnippetBytes = 256

// HTTPConfig configures the http executor.
type HTTPConfig struct {
	// AllowedHosts lists the hosts tasks may call: an exact hostname or IP
	// ("api.example.com"), a suffix wildcard ("*.example.com", which matches
	// a.example.com and a.b.example.com but not example.com), or "*" for any
	// host. Ports are not part of the match. Empty: every task is refused.
	AllowedHosts []string
	// AllowPrivateNetworks lets tasks reach loopback, private, link-local,
	// CGNAT and other non-public addresses; default false.
	AllowPrivateNetworks bool
	// DefaultTimeout applies to tasks without a timeout; default 30 seconds.
	DefaultTimeout time.Duration
	// MaxResponseBytes bounds the response body read; default 64 KiB.
	MaxResponseBytes int64
}

type httpExecutor struct {
	cfg    HTTPConfig
	hosts  hostAllowlist
	client *http.Client
}

// NewHTTP returns the http executor. It sends one request per task, with
// Idempotency-Key set to the task id so a retried task can be recognised by
// the receiver, and only to allowed hosts at public addresses.
//
// NewHTTP returns an error naming the entry when an allowed host is malformed
// and when a limit is negative.
func NewHTTP(cfg HTTPConfig) (Executor, error) {
	var errs []error
	if cfg.DefaultTimeout < 0 {
		errs = append(errs, fmt.Errorf("http.default_timeout must be >= 0, got %s", cfg.DefaultTimeout))
	}
	if cfg.DefaultTimeout == 0 {
		cfg.DefaultTimeout = DefaultHTTPTimeout
	}
	if cfg.MaxResponseBytes < 0 {
		errs = append(errs, fmt.Errorf("http.max_response_bytes must be >= 0, got %d", cfg.MaxResponseBytes))
	}
	if cfg.MaxResponseBytes == 0 {
		cfg.MaxResponseBytes = DefaultHTTPMaxResponseBytes
	}
	hosts, err := newHostAllowlist(cfg.AllowedHosts)
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cfg.AllowedHosts = slices.Clone(cfg.AllowedHosts)

	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	if !cfg.AllowPrivateNetworks {
		// Checking the address being dialled, after DNS resolution, is what
		// makes the check hold: a public name resolving to 127.0.0.1, a DNS
		// answer that changes between check and use, and every redirect all
		// pass through here.
		dialer.Control = refuseNonPublic
	}
	transport := &http.Transport{
		// No proxy, whatever HTTP_PROXY says: through a proxy we would dial
		// the proxy's address, and the destination's would go unchecked.
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   10,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	e := &httpExecutor{cfg: cfg, hosts: hosts}
	e.client = &http.Client{
		Transport: transport,
		// The timeout of each request is its task's, set on its context in
		// Execute; it covers dialling, headers and reading the body.
		Timeout:       0,
		CheckRedirect: e.checkRedirect,
	}
	return e, nil
}

func (e *httpExecutor) Execute(ctx context.Context, t *task.Task) ([]byte, error) {
	if err := checkTask(t); err != nil {
		return nil, err
	}
	req, expect, err := e.newRequest(t)
	if err != nil {
		return nil, err
	}
	// The task's span (when traced) continues at the receiving service;
	// set after the task's own headers, so no parameter can forge it.
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header))
	timeout, err := taskTimeout(t, e.cfg.DefaultTimeout)
	if err != nil {
		return nil, err
	}
	reqCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	target := req.Method + " " + req.URL.Redacted()
	resp, err := e.client.Do(req.WithContext(reqCtx))
	if err != nil {
		return nil, e.requestError(ctx, reqCtx, t, target, timeout, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, e.cfg.MaxResponseBytes+1))
	if err != nil {
		return nil, e.requestError(ctx, reqCtx, t, target, timeout, fmt.Errorf("read response: %w", err))
	}
	if int64(len(body)) > e.cfg.MaxResponseBytes {
		body = append(body[:e.cfg.MaxResponseBytes], "…[truncated]"...)
	}

	if expect(resp.StatusCode) {
		return body, nil
	}
	err = fmt.Errorf("http task %s: %s: unexpected status %s; body: %s", t.TaskID, target, resp.Status, snippet(body))
	if retryableStatus(resp.StatusCode) {
		return body, err
	}
	// A 4xx (or an unexpected 2xx/3xx) answers the same request the same way
	// next time.
	return body, permanent.Wrap(err)
}

// requestError tells a cancellation by the caller, the task's own timeout and
// other failures apart. Refusals (allowlist, private address) stay permanent;
// network errors are retried.
func (e *httpExecutor) requestError(ctx, reqCtx context.Context, t *task.Task, target string, timeout time.Duration, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("http task %s: %s: %w", t.TaskID, target, ctxErr)
	}
	if reqCtx.Err() != nil && !permanent.Is(err) {
		return fmt.Errorf("http task %s: %s timed out after %s: %w", t.TaskID, target, timeout, context.DeadlineExceeded)
	}
	return fmt.Errorf("http task %s: %s: %w", t.TaskID, target, err)
}

// checkRedirect re-applies the URL rules to every redirect; the dialer checks
// the address it leads to. A redirect to another host (or port) gets none of
// the task's own headers: net/http drops only Authorization and cookies
// there, and a task's X-Api-Key is as secret.
func (e *httpExecutor) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > maxRedirects {
		return permanent.Wrap(fmt.Errorf("stopped after %d redirects", maxRedirects))
	}
	if err := e.checkURL(req.URL); err != nil {
		return fmt.Errorf("redirect to %s: %w", req.URL.Redacted(), err)
	}
	if req.URL.Host != via[0].URL.Host {
		for name := range req.Header {
			if !redirectKeeps[name] {
				req.Header.Del(name)
			}
		}
	}
	return nil
}

// redirectKeeps are the headers eventpipe itself sets, kept on a redirect
// to another host.
var redirectKeeps = map[string]bool{"User-Agent": true, "Idempotency-Key": true, "Content-Type": true,
	"Traceparent": true, "Tracestate": true}

// checkURL refuses schemes other than http and https and hosts not on the allowlist.
func (e *httpExecutor) checkURL(u *url.URL) error {
	if u.Scheme != "http" && u.Scheme != "https" {
		return permanent.Wrap(fmt.Errorf("scheme %q is not allowed; want http or https", u.Scheme))
	}
	host := u.Hostname()
	if host == "" {
		return permanent.Wrap(errors.New("url has no host"))
	}
	if !e.hosts.allows(host) {
		return permanent.Wrap(fmt.Errorf("host %q is not on the http allowlist", host))
	}
	return nil
}

// newRequest builds the request from the task's parameters and returns which
// statuses count as success. Every problem is a permanent error naming the
// parameter.
func (e *httpExecutor) newRequest(t *task.Task) (*http.Request, func(int) bool, error) {
	rawURL, ok, err := stringParam(t, "url")
	if err != nil {
		return nil, nil, err
	}
	if !ok || rawURL == "" {
		return nil, nil, paramError("url", "is required")
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, nil, paramError("url", "%v", err)
	}
	if err := e.checkURL(u); err != nil {
		return nil, nil, fmt.Errorf("parameters.url: %w", err)
	}

	body, contentType, err := httpBody(t)
	if err != nil {
		return nil, nil, err
	}
	method, err := httpMethod(t, body != nil)
	if err != nil {
		return nil, nil, err
	}
	expect, err := expectStatus(t)
	if err != nil {
		return nil, nil, err
	}

	var bodyReader io.Reader
	if body != nil {
		// A *bytes.Reader lets the client replay the body on a 307/308 redirect.
		bodyReader = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, u.String(), bodyReader)
	if err != nil {
		return nil, nil, paramError("url", "%v", err)
	}
	req.Header.Set("User-Agent", "eventpipe")
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if err := setHeaders(t, req.Header); err != nil {
		return nil, nil, err
	}
	// Set last, so no parameter can replace it.
	req.Header.Set("Idempotency-Key", t.TaskID)
	return req, expect, nil
}

// httpBody encodes parameters.body: an object or array as JSON, a string as is.
func httpBody(t *task.Task) (body []byte, contentType string, err error) {
	switch v := t.Parameters["body"].(type) {
	case nil:
		return nil, "", nil
	case string:
		return []byte(v), "", nil
	case map[string]any, []any:
		b, err := json.Marshal(v)
		if err != nil {
			return nil, "", paramError("body", "%v", err)
		}
		return b, "application/json", nil
	default:
		return nil, "", paramError("body", "want an object, array or string, got %s", typeName(v))
	}
}

var httpMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

// httpMethod returns parameters.method in upper case, by default POST when
// there is a body and GET otherwise.
func httpMethod(t *task.Task, hasBody bool) (string, error) {
	m, ok, err := stringParam(t, "method")
	if err != nil {
		return "", err
	}
	if !ok || m == "" {
		if hasBody {
			return http.MethodPost, nil
		}
		return http.MethodGet, nil
	}
	upper := strings.ToUpper(m)
	if !slices.Contains(httpMethods, upper) {
		return "", paramError("method", "%q is not one of %s", m, strings.Join(httpMethods, ", "))
	}
	return upper, nil
}

// reservedHeaders are set by the executor or the transport; a task setting
// them would break idempotency or the framing of the request.
var reservedHeaders = []string{"Host", "Content-Length", "Idempotency-Key", "Transfer-Encoding"}

// setHeaders copies parameters.headers (a map of strings) into h.
func setHeaders(t *task.Task, h http.Header) error {
	var headers map[string]any
	switch v := t.Parameters["headers"].(type) {
	case nil:
		return nil
	case map[string]any:
		headers = v
	case map[string]string:
		headers = make(map[string]any, len(v))
		for k, s := range v {
			headers[k] = s
		}
	default:
		return paramError("headers", "want an object of strings, got %s", typeName(v))
	}
	// Sorted, so that of several bad headers the same one is reported each time.
	names := make([]string, 0, len(headers))
	for name := range headers {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		v := headers[name]
		field := "headers." + name
		value, ok := v.(string)
		if !ok {
			return paramError(field, "want a string, got %s", typeName(v))
		}
		if !validHeaderName(name) {
			return paramError(field, "%q is not a valid header name", name)
		}
		if strings.ContainsAny(value, "\r\n\x00") {
			return paramError(field, "value contains CR, LF or NUL")
		}
		canonical := http.CanonicalHeaderKey(name)
		if slices.Contains(reservedHeaders, canonical) {
			return paramError(field, "%s is set by the executor and cannot be overridden", canonical)
		}
		h.Set(canonical, value)
	}
	return nil
}

// validHeaderName reports whether name is an RFC 9110 token.
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// expectStatus returns the success test from parameters.expectStatus: an
// integer or a list of integers; default any 2xx.
func expectStatus(t *task.Task) (func(int) bool, error) {
	v, present := t.Parameters["expectStatus"]
	if !present || v == nil {
		return func(code int) bool { return code >= 200 && code <= 299 }, nil
	}
	list, isList := v.([]any)
	if !isList {
		list = []any{v}
	} else if len(list) == 0 {
		return nil, paramError("expectStatus", "is an empty list")
	}
	codes := make([]int, len(list))
	for i, item := range list {
		f, ok := number(item)
		if !ok || f != float64(int(f)) || f < 100 || f > 599 {
			field := "expectStatus"
			if isList {
				field += "[" + strconv.Itoa(i) + "]"
			}
			return nil, paramError(field, "want an HTTP status code (100-599), got %s", describe(item))
		}
		codes[i] = int(f)
	}
	return func(code int) bool { return slices.Contains(codes, code) }, nil
}

// retryableStatus reports whether a failed answer may change on retry:
// server errors, 408 Request Timeout and 429 Too Many Requests.
func retryableStatus(code int) bool {
	return code >= 500 || code == http.StatusRequestTimeout || code == http.StatusTooManyRequests
}

func snippet(body []byte) string {
	if len(body) > errSnippetBytes {
		body = body[:errSnippetBytes]
	}
	s := strings.TrimSpace(strings.ToValidUTF8(string(body), "\uFFFD"))
	if s == "" {
		return "(empty)"
	}
	return s
}

// hostAllowlist matches hostnames against exact names, "*.suffix" wildcards
// and "*".
type hostAllowlist struct {
	any      bool
	exact    map[string]bool
	suffixes []string // ".example.com"
}

func newHostAllowlist(entries []string) (hostAllowlist, error) {
	l := hostAllowlist{exact: map[string]bool{}}
	var errs []error
	for i, entry := range entries {
		// "*" is matched before normalizing: "*." must not become "*".
		if strings.TrimSpace(entry) == "*" {
			l.any = true
			continue
		}
		h := normalizeHost(entry)
		switch {
		case strings.HasPrefix(h, "*.") && validHostname(h[2:]):
			l.suffixes = append(l.suffixes, h[1:])
		case validHostname(h):
			l.exact[h] = true
		default:
			errs = append(errs, fmt.Errorf("http.allowed_hosts[%d] %q: want a hostname, \"*.domain\" or \"*\"", i, entry))
		}
	}
	return l, errors.Join(errs...)
}

func (l hostAllowlist) allows(host string) bool {
	host = normalizeHost(host)
	if l.any || l.exact[host] {
		return true
	}
	for _, s := range l.suffixes {
		if strings.HasSuffix(host, s) {
			return true
		}
	}
	return false
}

// normalizeHost makes equal hosts compare equal: case, a trailing dot, IPv6 brackets.
func normalizeHost(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	h = strings.TrimSuffix(h, ".")
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	return h
}

// validHostname accepts DNS names and IP literals; no ports, paths or schemes.
func validHostname(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// nonPublicPrefixes are the special-purpose ranges netip has no method for.
var nonPublicPrefixes = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),     // "this network"; 0.0.0.0 reaches localhost
	netip.MustParsePrefix("100.64.0.0/10"), // CGNAT, often internal
	netip.MustParsePrefix("192.0.0.0/24"),  // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"), // benchmarking, used inside networks
	netip.MustParsePrefix("240.0.0.0/4"),   // reserved, and 255.255.255.255 broadcast
}

// embeddedIPv4 are IPv6 ranges that carry an IPv4 address, which a NAT64
// gateway, a 6to4 relay or the kernel may turn into a connection to it
// (64:ff9b::a9fe:a9fe reaches 169.254.169.254): that address is checked too.
var embeddedIPv4 = []struct {
	prefix netip.Prefix
	offset int // byte offset of the IPv4 address in the IPv6 one
}{
	{netip.MustParsePrefix("64:ff9b::/96"), 12},   // NAT64 well-known
	{netip.MustParsePrefix("64:ff9b:1::/48"), 12}, // NAT64 local-use
	{netip.MustParsePrefix("2002::/16"), 2},       // 6to4
	{netip.MustParsePrefix("::/96"), 12},          // IPv4-compatible (deprecated)
}

// refuseNonPublic is the net.Dialer Control hook: it runs with the resolved
// address right before connect(2), and refuses non-public destinations.
func refuseNonPublic(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return permanent.Wrap(fmt.Errorf("refusing to dial %q: not an IP address", address))
	}
	if !isPublic(ap.Addr()) {
		return permanent.Wrap(fmt.Errorf("refusing to dial %s: not a public address (loopback, private, link-local, CGNAT or special); set AllowPrivateNetworks to allow", ap.Addr()))
	}
	return nil
}

// isPublic reports whether addr is a unicast address on the public internet.
func isPublic(addr netip.Addr) bool {
	addr = addr.Unmap() // ::ffff:127.0.0.1 is 127.0.0.1
	if addr.IsLoopback() || addr.IsPrivate() || addr.IsLinkLocalUnicast() ||
		addr.IsUnspecified() || addr.IsMulticast() || addr.IsLinkLocalMulticast() ||
		addr.IsInterfaceLocalMulticast() {
		return false
	}
	for _, p := range nonPublicPrefixes {
		if p.Contains(addr) {
			return false
		}
	}
	for _, e := range embeddedIPv4 {
		if e.prefix.Contains(addr) {
			b := addr.As16()
			return isPublic(netip.AddrFrom4([4]byte(b[e.offset : e.offset+4])))
		}
	}
	return true
}
