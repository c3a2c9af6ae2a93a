package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/eventpipe/eventpipe/config"
)

// apiClient calls the HTTP API of a running `eventpipe run`: the history
// commands and, on the embedded broker, dlq ask it.
type apiClient struct {
	base   string
	token  string
	client *http.Client
}

// newAPIClient reaches the server cfg describes: http.addr (an unspecified
// host such as 0.0.0.0 means this machine), with the configured token.
// server, when set, is the base URL instead (--server).
func newAPIClient(cfg *config.Config, server string) *apiClient {
	base := server
	if base == "" {
		host, port, err := net.SplitHostPort(cfg.HTTP.Addr)
		if err == nil && (host == "" || net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified()) {
			host = "127.0.0.1"
		}
		base = "http://" + net.JoinHostPort(host, port)
	}
	return &apiClient{base: strings.TrimSuffix(base, "/"), token: clientToken(cfg.HTTP),
		client: &http.Client{Timeout: 30 * time.Second}}
}

// apiError is a non-2xx answer: its status and the server's message.
type apiError struct {
	Status  int
	Message string
	Details []json.RawMessage
}

func (e *apiError) Error() string {
	msg := fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
	for _, d := range e.Details {
		msg += "; " + string(d)
	}
	return msg
}

// do sends a request and decodes a 2xx JSON answer into out.
func (c *apiClient) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s (is `eventpipe run` serving on %s?): %w", method, path, c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error   string            `json:"error"`
			Details []json.RawMessage `json:"details"`
		}
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
		}
		return &apiError{Status: resp.StatusCode, Message: e.Error, Details: e.Details}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}
