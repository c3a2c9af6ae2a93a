package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/eventpipe/eventpipe/history"
	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/rulestore"
)

// History answers what happened to events and tasks and how rules
// changed; *history.Store is one.
type History interface {
	Event(ctx context.Context, id string) (*history.Event, error)
	Task(ctx context.Context, id string) (*history.Task, error)
	Tasks(ctx context.Context, q history.TaskQuery) (history.TaskPage, error)
	RuleHistory(ctx context.Context, ruleID string) ([]rulestore.ChangeRecord, error)
}

// RuleRollback brings back a version of a rule; *rulestore.Store is one.
type RuleRollback interface {
	Rollback(ctx context.Context, r rules.Rule, latest int64, ch rulestore.Change) (rules.Rule, error)
}

// RuleHistory is the answer of GET /api/v1/task-trigger-rules/{ruleId}/history.
type RuleHistory struct {
	RuleID string                   `json:"ruleId"`
	Items  []rulestore.ChangeRecord `json:"items"`
}

// taskStatuses are the statuses GET /api/v1/tasks?status= accepts.
var taskStatuses = []string{history.StatusPending, history.StatusRetrying, "SUCCEEDED", "FAILED"}

// withHistory answers 501 when the server has no history store.
func (s *Server) withHistory(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.deps.History == nil {
			writeError(w, http.StatusNotImplemented,
				"history is off on this server: set history.store (sqlite or postgres) to record what events and tasks did")
			return
		}
		h(w, r)
	}
}

// handleGetEvent answers an event's timeline: the rules of its type and
// what each did, its tasks with their attempts and results; 404 when the
// history has nothing about it.
func (s *Server) handleGetEvent(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	ev, err := s.deps.History.Event(r.Context(), id)
	if err != nil {
		s.writeHistoryError(w, r, "event", id, err)
		return
	}
	writeJSON(w, http.StatusOK, ev)
}

func (s *Server) handleGetTask(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	t, err := s.deps.History.Task(r.Context(), id)
	if err != nil {
		s.writeHistoryError(w, r, "task", id, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

// handleListTasks answers a page of tasks, newest first, filtered by
// status, ruleId, eventType, since and until (RFC 3339, or a duration
// back from now such as 1h), continued with cursor; limit 1..500.
func (s *Server) handleListTasks(w http.ResponseWriter, r *http.Request) {
	q, details := parseTaskQuery(r.URL.Query(), time.Now())
	if len(details) > 0 {
		writeError(w, http.StatusBadRequest, "invalid query parameters", details...)
		return
	}
	page, err := s.deps.History.Tasks(r.Context(), q)
	if errors.Is(err, history.ErrBadCursor) {
		writeError(w, http.StatusBadRequest, "invalid query parameters",
			FieldDetail{Field: "cursor", Value: truncate(q.Cursor, 64), Error: "cursor must be the next value of a previous page"})
		return
	}
	if err != nil {
		s.writeHistoryError(w, r, "tasks", "", err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// parseTaskQuery reads the task list's query parameters, naming each bad one.
func parseTaskQuery(v map[string][]string, now time.Time) (history.TaskQuery, []any) {
	get := func(k string) string {
		if vs := v[k]; len(vs) > 0 {
			return vs[0]
		}
		return ""
	}
	var details []any
	q := history.TaskQuery{RuleID: get("ruleId"), EventType: get("eventType"), Cursor: get("cursor")}
	if st := strings.ToUpper(get("status")); st != "" {
		ok := false
		for _, known := range taskStatuses {
			ok = ok || st == known
		}
		if !ok {
			details = append(details, FieldDetail{Field: "status", Value: truncate(get("status"), 64),
				Error: "status must be one of " + strings.Join(taskStatuses, ", ")})
		}
		q.Status = st
	}
	for _, f := range []struct {
		name string
		dst  *time.Time
	}{{"since", &q.Since}, {"until", &q.Until}} {
		raw := get(f.name)
		if raw == "" {
			continue
		}
		t, err := ParseSince(raw, now)
		if err != nil {
			details = append(details, FieldDetail{Field: f.name, Value: truncate(raw, 64), Error: err.Error()})
		}
		*f.dst = t
	}
	if raw := get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > history.MaxTaskPage {
			details = append(details, FieldDetail{Field: "limit", Value: truncate(raw, 64),
				Error: fmt.Sprintf("limit must be a whole number from 1 to %d", history.MaxTaskPage)})
		}
		q.Limit = n
	}
	return q, details
}

// ParseSince reads a point in time: RFC 3339, or a duration (1h, 30m, 2h45m)
// meaning that long before now.
func ParseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, errors.New("must be an RFC 3339 time (2026-01-02T15:04:05Z) or a duration back from now (1h, 30m)")
	}
	return now.Add(-d), nil
}

// handleRuleHistory answers every recorded change of a rule, oldest first:
// who, when, which version, what changed and the whole rule; 404 when none.
func (s *Server) handleRuleHistory(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("ruleId")
	items, err := s.deps.History.RuleHistory(r.Context(), id)
	if err != nil {
		s.writeHistoryError(w, r, "rule", id, err)
		return
	}
	writeJSON(w, http.StatusOK, RuleHistory{RuleID: id, Items: items})
}

// rollbackRequest is the body of POST …/{ruleId}/rollback.
type rollbackRequest struct {
	Version *int64 `json:"version"`
}

// handleRollback makes a rule what one of its recorded versions was, as a
// new version (If-Match applies as for PUT); a deleted rule is created
// again. 404 when the history has no such version.
func (s *Server) handleRollback(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("ruleId")
	rb, ok := s.deps.Rules.(RuleRollback)
	if !ok {
		writeError(w, http.StatusNotImplemented, "this server's rule store cannot roll back")
		return
	}
	body, ok := s.readJSONBody(w, r)
	if !ok {
		return
	}
	var req rollbackRequest
	if err := decodeStrict(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid request body: "+err.Error())
		return
	}
	if req.Version == nil || *req.Version < 1 {
		writeError(w, http.StatusBadRequest, "invalid request body",
			FieldDetail{Field: "version", Error: `"version" is required: the version to roll back to, >= 1`})
		return
	}
	items, err := s.deps.History.RuleHistory(r.Context(), id)
	if err != nil {
		s.writeHistoryError(w, r, "rule", id, err)
		return
	}
	var target *rules.Rule
	var latest int64
	for _, it := range items {
		latest = max(latest, it.Version)
		if it.Version == *req.Version && it.Rule != nil {
			target = it.Rule
		}
	}
	if target == nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("rule %q has no version %d in its history", truncate(id, 140), *req.Version),
			FieldDetail{Field: "version", Value: strconv.FormatInt(*req.Version, 10), Error: "no such version"})
		return
	}
	restored, err := rb.Rollback(r.Context(), *target, latest, s.change(r))
	if err != nil {
		s.writeStoreError(w, r, id, err)
		return
	}
	writeRule(w, http.StatusOK, restored)
}

// writeHistoryError answers 404 for what the history does not hold, 503
// when the history store cannot be read.
func (s *Server) writeHistoryError(w http.ResponseWriter, r *http.Request, what, id string, err error) {
	if errors.Is(err, history.ErrNotFound) {
		msg := fmt.Sprintf("%s %q not found in the history", what, truncate(id, 140))
		if what == "event" {
			msg += " (never received, pruned by history.retention, or its record was dropped)"
		}
		writeError(w, http.StatusNotFound, msg)
		return
	}
	s.log.WarnContext(r.Context(), "history read failed", "what", what, "id", truncate(id, 140), "error", err)
	writeError(w, http.StatusServiceUnavailable, "the history store cannot be read: "+err.Error())
}
