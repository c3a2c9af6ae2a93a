package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"
)

// ErrorBody is every error answer: {"error": "...", "details": [...]}.
type ErrorBody struct {
	Error   string `json:"error"`
	Details []any  `json:"details,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	// Conditions such as "payload.amount > 1000" read as written, not as
	// \u003e: the answer is JSON with nosniff, never HTML.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil { // Encode ends the value with a newline
		// Only our own response types get here; they always marshal.
		status = http.StatusInternalServerError
		b.Reset()
		b.WriteString(`{"error":"encode response"}` + "\n")
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(b.Bytes())
}

func writeError(w http.ResponseWriter, status int, msg string, details ...any) {
	writeJSON(w, status, ErrorBody{Error: msg, Details: details})
}

// readJSONBody checks the Content-Type and reads the body, limited to
// Config.MaxBodyBytes. On failure it has answered (415, 413 or 400) and
// returns false.
func (s *Server) readJSONBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	return s.readJSONBodyLimit(w, r, s.cfg.MaxBodyBytes)
}

// readJSONBodyLimit is readJSONBody with a limit of its own.
func (s *Server) readJSONBodyLimit(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSONMediaType(ct) {
		writeError(w, http.StatusUnsupportedMediaType,
			fmt.Sprintf("unsupported Content-Type %q: send application/json", ct))
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge,
				fmt.Sprintf("request body exceeds the limit of %d bytes", tooBig.Limit))
			return nil, false
		}
		writeError(w, http.StatusBadRequest, "read request body: "+err.Error())
		return nil, false
	}
	if len(bytes.TrimSpace(body)) == 0 {
		writeError(w, http.StatusBadRequest, "request body is empty: send JSON")
		return nil, false
	}
	return body, true
}

// isJSONMediaType accepts application/json and any +json type, such as
// application/cloudevents+json and application/cloudevents-batch+json.
func isJSONMediaType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))
}

// jsonMuxErrors answers the mux's own 404 and 405 (which it writes as plain
// text) as JSON errors, keeping its Allow header.
func jsonMuxErrors(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The mux reports no pattern exactly when it would answer 404 or 405.
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		capture := &headerCapture{header: http.Header{}}
		h.ServeHTTP(capture, r)
		status := capture.status
		if status == 0 {
			status = http.StatusNotFound
		}
		if allow := capture.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		msg := http.StatusText(status)
		switch status {
		case http.StatusNotFound:
			msg = fmt.Sprintf("no endpoint %s", r.URL.Path)
		case http.StatusMethodNotAllowed:
			msg = fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path)
		}
		writeError(w, status, msg)
	})
}

// headerCapture records what the mux's fallback handlers would answer and
// drops their plain-text body.
type headerCapture struct {
	header http.Header
	status int
}

func (c *headerCapture) Header() http.Header { return c.header }

func (c *headerCapture) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	return len(b), nil
}

func (c *headerCapture) WriteHeader(status int) {
	if c.status == 0 {
		c.status = status
	}
}

// requestInfo carries what inner layers learn about a request (the token's
// name) out to the request log.
type requestInfo struct {
	tokenName string
}

type infoKey struct{}

func infoFrom(ctx context.Context) *requestInfo {
	info, _ := ctx.Value(infoKey{}).(*requestInfo)
	return info
}

// statusRecorder remembers the status written, for the request log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(status int) {
	if s.status == 0 {
		s.status = status
	}
	s.ResponseWriter.WriteHeader(status)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// logRequests logs each request at Debug: per-request Info logs would
// dominate the cost of a busy ingest endpoint.
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.log.Enabled(r.Context(), slog.LevelDebug) {
			next.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		info := &requestInfo{}
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), infoKey{}, info)))
		attrs := []slog.Attr{
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", rec.status),
			slog.Duration("duration", time.Since(start)),
			slog.String("remote_addr", r.RemoteAddr),
		}
		if info.tokenName != "" {
			attrs = append(attrs, slog.String("token_name", info.tokenName))
		}
		s.log.LogAttrs(r.Context(), slog.LevelDebug, "http request", attrs...)
	})
}

// recoverer turns a handler panic into a logged 500 JSON answer.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler { //nolint:errorlint // sentinel value compared as the http package does
				panic(v)
			}
			s.log.Error("http handler panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v))
			writeError(w, http.StatusInternalServerError, "internal error")
		}()
		next.ServeHTTP(w, r)
	})
}
