package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"github.com/eventpipe/eventpipe/config"
	"net"
	"net/http"
	"sort"
	"strings"
)

// defaultTokenName names Config.Token in audit logs.
const defaultTokenName = "default"

// namedToken is a configured token, kept only as its SHA-256 so comparisons
// take the same time whatever the length of the presented token.
type namedToken struct {
	name string
	sum  [sha256.Size]byte
}

// hashTokens merges Config.Token and Config.Tokens, rejecting empty names,
// empty values and values a header cannot carry.
func hashTokens(token string, tokens map[string]string) ([]namedToken, error) {
	all := make(map[string]string, len(tokens)+1)
	var errs []error
	for name, tok := range tokens {
		all[name] = tok
	}
	if token != "" {
		if other, ok := all[defaultTokenName]; ok && other != token {
			errs = append(errs, fmt.Errorf("tokens[%q] conflicts with token: %q is the name of the single token", defaultTokenName, defaultTokenName))
		}
		all[defaultTokenName] = token
	}
	names := make([]string, 0, len(all))
	for name := range all {
		names = append(names, name)
	}
	// Sorted, so the name logged for a token given twice is deterministic.
	sort.Strings(names)
	out := make([]namedToken, 0, len(names))
	for _, name := range names {
		tok := all[name]
		switch {
		case strings.TrimSpace(name) == "":
			errs = append(errs, errors.New("tokens: a token has an empty name"))
		case tok == "":
			errs = append(errs, fmt.Errorf("tokens[%q]: the token is empty", name))
		case strings.IndexFunc(tok, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0:
			// The value is a secret: name the problem, never echo the value.
			errs = append(errs, fmt.Errorf("tokens[%q]: the token contains whitespace or control characters", name))
		default:
			out = append(out, namedToken{name: name, sum: sha256.Sum256([]byte(tok))})
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// checkListenAddr refuses a non-loopback address when no token is set.
func checkListenAddr(addr string, hasToken bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", addr, err)
	}
	if hasToken || config.IsLoopbackHost(host) {
		return nil
	}
	return fmt.Errorf("refusing to listen on non-loopback address %q without an API token: "+
		"anyone who can reach it could change rules and inject events; "+
		"set a token (EVENTPIPE_API_TOKEN) or listen on 127.0.0.1", addr)
}

// rulesPath prefixes every rules endpoint.
const rulesPath = "/api/v1/task-trigger-rules"

// authenticate requires a valid bearer token, when tokens are configured, on
// every method that can change state and on reading rules (their parameters
// may hold credentials, e.g. an http task's headers). Other GET, HEAD and
// OPTIONS requests stay open so probes and Prometheus need no secret.
func (s *Server) authenticate(next http.Handler) http.Handler {
	if len(s.tokens) == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			if !readNeedsToken(r.URL.Path) {
				next.ServeHTTP(w, r)
				return
			}
		}
		presented, ok := bearerToken(r.Header.Get("Authorization"))
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="eventpipe"`)
			writeError(w, http.StatusUnauthorized, "missing bearer token: send Authorization: Bearer <token>")
			return
		}
		name := s.matchToken(presented)
		if name == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="eventpipe", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "invalid bearer token")
			return
		}
		if info := infoFrom(r.Context()); info != nil {
			info.tokenName = name
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tokenNameKey{}, name)))
	})
}

// readNeedsToken reports whether reading path needs the token: rules (their
// parameters may hold credentials), history (event payloads, task output)
// and poison messages. The console's static files hold no data and stay
// open; the console sends the token with every API call it makes.
func readNeedsToken(path string) bool {
	for _, prefix := range []string{rulesPath, "/api/v1/events/", "/api/v1/tasks", "/api/v1/dlq"} {
		if strings.HasPrefix(path, prefix) {
			return true
		}
	}
	return false
}

type tokenNameKey struct{}

// tokenName returns the name of the token that authenticated the request, or
// "" when none did; audit logs of changes carry it.
func tokenName(ctx context.Context) string {
	name, _ := ctx.Value(tokenNameKey{}).(string)
	return name
}

// matchToken returns the name of the configured token equal to presented, or
// "". It compares against every token so the time taken does not say which
// one matched.
func (s *Server) matchToken(presented string) string {
	sum := sha256.Sum256([]byte(presented))
	name := ""
	for _, t := range s.tokens {
		if subtle.ConstantTimeCompare(sum[:], t.sum[:]) == 1 && name == "" {
			name = t.name
		}
	}
	return name
}

// bearerToken extracts the token of an "Authorization: Bearer <token>"
// header; the scheme is case-insensitive (RFC 7235).
func bearerToken(header string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// browserGuard stops web pages from using the operator's browser against the
// API. Cross-site writes (a form or no-cors fetch) are refused by Go's
// CrossOriginProtection (Sec-Fetch-Site / Origin). Without tokens the
// server only listens on loopback, and DNS rebinding could still make a page
// same-origin with it: so then only loopback Host names are served.
func (s *Server) browserGuard(next http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusForbidden, "cross-origin request refused: the API does not serve other web origins")
	}))
	guarded := cop.Handler(next)
	if len(s.tokens) > 0 {
		return guarded
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(r.Host); err == nil {
			host = h
		}
		if !config.IsLoopbackHost(strings.Trim(host, "[]")) {
			writeError(w, http.StatusForbidden, fmt.Sprintf(
				"host %q refused: without a token the API only answers loopback names (localhost, 127.0.0.1, [::1])", r.Host))
			return
		}
		guarded.ServeHTTP(w, r)
	})
}
