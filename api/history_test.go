package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/api"
	"github.com/eventpipe/eventpipe/history"
	"github.com/eventpipe/eventpipe/rulestore"
)

// fakeHistory records the task query it was asked and answers fixed data.
type fakeHistory struct {
	query history.TaskQuery
}

func (f *fakeHistory) Event(_ context.Context, id string) (*history.Event, error) {
	if id != "e-1" {
		return nil, history.ErrNotFound
	}
	return &history.Event{EventID: id, EventType: "order.created"}, nil
}

func (f *fakeHistory) Task(_ context.Context, id string) (*history.Task, error) {
	return nil, history.ErrNotFound
}

func (f *fakeHistory) Tasks(_ context.Context, q history.TaskQuery) (history.TaskPage, error) {
	f.query = q
	if q.Cursor == "bad" {
		return history.TaskPage{}, history.ErrBadCursor
	}
	return history.TaskPage{Items: []history.Task{}}, nil
}

func (f *fakeHistory) RuleHistory(_ context.Context, id string) ([]rulestore.ChangeRecord, error) {
	return nil, history.ErrNotFound
}

func TestTasks_query_parameters_are_checked_naming_each(t *testing.T) {
	t.Parallel()
	fh := &fakeHistory{}
	h := newServer(t, api.Config{}, api.Deps{History: fh}).Handler()
	tests := []struct {
		name   string
		query  string
		fields []string
	}{
		{name: "status", query: "status=DONE", fields: []string{"status"}},
		{name: "since and limit", query: "since=yesterday&limit=0", fields: []string{"since", "limit"}},
		{name: "until", query: "until=-1h", fields: []string{"until"}},
		{name: "limit too big", query: "limit=501", fields: []string{"limit"}},
		{name: "cursor", query: "cursor=bad", fields: []string{"cursor"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := do(t, h, http.MethodGet, "/api/v1/tasks?"+tt.query, "", nil)
			require.Equal(t, http.StatusBadRequest, res.status, string(res.body))
			var eb struct {
				Details []api.FieldDetail `json:"details"`
			}
			require.NoError(t, json.Unmarshal(res.body, &eb))
			var got []string
			for _, d := range eb.Details {
				got = append(got, d.Field)
			}
			assert.Equal(t, tt.fields, got)
		})
	}

	res := do(t, h, http.MethodGet, "/api/v1/tasks?status=failed&ruleId=r&eventType=order.created&since=1h&until=2026-01-02T03:04:05Z&limit=7", "", nil)
	require.Equal(t, http.StatusOK, res.status, string(res.body))
	assert.Equal(t, "FAILED", fh.query.Status)
	assert.Equal(t, "r", fh.query.RuleID)
	assert.Equal(t, "order.created", fh.query.EventType)
	assert.Equal(t, 7, fh.query.Limit)
	assert.WithinDuration(t, time.Now().Add(-time.Hour), fh.query.Since, time.Minute)
	assert.Equal(t, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), fh.query.Until.UTC())
}

func TestHistory_endpoints_answer_404_and_501(t *testing.T) {
	t.Parallel()
	on := newServer(t, api.Config{}, api.Deps{History: &fakeHistory{}}).Handler()
	off := newServer(t, api.Config{}, api.Deps{}).Handler()
	tests := []struct {
		name string
		h    http.Handler
		path string
		want int
	}{
		{name: "event found", h: on, path: "/api/v1/events/e-1", want: http.StatusOK},
		{name: "event missing", h: on, path: "/api/v1/events/nope", want: http.StatusNotFound},
		{name: "task missing", h: on, path: "/api/v1/tasks/nope", want: http.StatusNotFound},
		{name: "rule history missing", h: on, path: "/api/v1/task-trigger-rules/r/history", want: http.StatusNotFound},
		{name: "history off", h: off, path: "/api/v1/events/e-1", want: http.StatusNotImplemented},
		{name: "dlq off", h: off, path: "/api/v1/dlq", want: http.StatusNotImplemented},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := do(t, tt.h, http.MethodGet, tt.path, "", nil)
			assert.Equal(t, tt.want, res.status, string(res.body))
			if tt.want != http.StatusOK {
				assert.NotEmpty(t, res.errorBody(t).Error)
			}
		})
	}
}

func TestAuth_history_and_dlq_reads_need_the_token_the_console_files_do_not(t *testing.T) {
	t.Parallel()
	h := newServer(t, api.Config{Token: "s3cret"}, api.Deps{History: &fakeHistory{}}).Handler()
	for _, path := range []string{"/api/v1/events/e-1", "/api/v1/tasks", "/api/v1/tasks/x", "/api/v1/dlq",
		"/api/v1/task-trigger-rules/r/history"} {
		assert.Equal(t, http.StatusUnauthorized, do(t, h, http.MethodGet, path, "", nil).status, path)
	}
	assert.Equal(t, http.StatusOK, do(t, h, http.MethodGet, "/api/v1/events/e-1", "",
		map[string]string{"Authorization": "Bearer s3cret"}).status)
	res := do(t, h, http.MethodGet, "/ui/", "", nil)
	assert.Equal(t, http.StatusOK, res.status)
	assert.Contains(t, string(res.body), `<script type="module" src="app.js">`)
}

func TestConsole_is_served_with_a_strict_content_security_policy(t *testing.T) {
	t.Parallel()
	h := newServer(t, api.Config{}, api.Deps{}).Handler()
	for _, tt := range []struct{ path, ctype string }{
		{"/ui/", "text/html"}, {"/ui/app.js", "javascript"}, {"/ui/style.css", "text/css"},
	} {
		res := do(t, h, http.MethodGet, tt.path, "", nil)
		require.Equal(t, http.StatusOK, res.status, tt.path)
		assert.Contains(t, res.header.Get("Content-Type"), tt.ctype, tt.path)
		csp := res.header.Get("Content-Security-Policy")
		assert.Contains(t, csp, "script-src 'self'", tt.path)
		assert.NotContains(t, csp, "unsafe-inline", tt.path)
		assert.Equal(t, "nosniff", res.header.Get("X-Content-Type-Options"))
	}
	index := do(t, h, http.MethodGet, "/ui/", "", nil)
	assert.NotContains(t, strings.ToLower(string(index.body)), "<script>", "no inline script")
	assert.NotContains(t, strings.ToLower(string(index.body)), "style=", "no inline style")
	assert.Equal(t, http.StatusMovedPermanently, do(t, h, http.MethodGet, "/ui", "", nil).status)
	assert.Equal(t, http.StatusNotFound, do(t, h, http.MethodGet, "/ui/nope.js", "", nil).status)
}
