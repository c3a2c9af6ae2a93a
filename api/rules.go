package api

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"

	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/rulestore"
)

// Paging of GET /api/v1/task-trigger-rules.
const (
	DefaultPageSize = 20
	MaxPageSize     = 500
)

// RuleStore is the authoritative rule set behind the rules API;
// *rulestore.Store is one. Mutations are atomic and versioned; their errors
// are rulestore's (ErrNotFound, ErrExists, ErrPreconditionFailed,
// *InvalidError, *FileChangedError).
type RuleStore interface {
	List(offset, limit int) ([]rules.Rule, int)
	Get(id string) (rules.Rule, bool)
	Create(ctx context.Context, r rules.Rule, ch rulestore.Change) (rules.Rule, error)
	Update(ctx context.Context, r rules.Rule, ch rulestore.Change) (rules.Rule, error)
	SetEnabled(ctx context.Context, id string, enabled bool, ch rulestore.Change) (rules.Rule, error)
	Delete(ctx context.Context, id string, ch rulestore.Change) error
	// Set is the live compiled rule set, for dry runs against it.
	Set() *rules.Set
}

// RuleList is the answer of GET /api/v1/task-trigger-rules.
type RuleList struct {
	Items []rules.Rule `json:"items"`
	Page  int          `json:"page"`
	Size  int          `json:"size"`
	Total int          `json:"total"`
}

// withStore answers 501 when the server has no rule store, so the rules
// paths say what is missing instead of a bare 404.
func (s *Server) withStore(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.deps.Rules == nil {
			writeError(w, http.StatusNotImplemented, "the rules API is not configured on this server (no rule store)")
			return
		}
		h(w, r)
	}
}

// handleListRules answers a page of rules in file order: ?page=0&size=20,
// size at most MaxPageSize. A page past the end has no items.
func (s *Server) handleListRules(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	page, size := 0, DefaultPageSize
	var details []any
	if v := q.Get("page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			details = append(details, FieldDetail{Field: "page", Value: truncate(v, 64), Error: "page must be a whole number >= 0"})
		}
		page = n
	}
	if v := q.Get("size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPageSize {
			details = append(details, FieldDetail{Field: "size", Value: truncate(v, 64),
				Error: fmt.Sprintf("size must be a whole number from 1 to %d", MaxPageSize)})
		}
		size = n
	}
	if len(details) > 0 {
		writeError(w, http.StatusBadRequest, "invalid query parameters", details...)
		return
	}
	offset := math.MaxInt // a page too far to compute is past the end
	if page <= math.MaxInt/size {
		offset = page * size
	}
	items, total := s.deps.Rules.List(offset, size)
	writeJSON(w, http.StatusOK, RuleList{Items: items, Page: page, Size: size, Total: total})
}

func (s *Server) handleGetRule(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("ruleId")
	rule, ok := s.deps.Rules.Get(id)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("rule %q not found", truncate(id, 140)))
		return
	}
	writeRule(w, http.StatusOK, rule)
}

// handleCreateRule adds a rule: 201 with Location and ETag; 400 listing each
// problem (rule id, field, expr position); 409 when the id is taken.
func (s *Server) handleCreateRule(w http.ResponseWriter, r *http.Request) {
	rule, ok := s.readRule(w, r, "")
	if !ok {
		return
	}
	created, err := s.deps.Rules.Create(r.Context(), rule, s.change(r))
	if err != nil {
		s.writeStoreError(w, r, rule.RuleID, err)
		return
	}
	w.Header().Set("Location", "/api/v1/task-trigger-rules/"+created.RuleID)
	writeRule(w, http.StatusCreated, created)
}

// handleUpdateRule replaces a rule. The body's ruleId, when given, must be
// the path's; its version, when given, must be the current one, like an
// If-Match (412 otherwise).
func (s *Server) handleUpdateRule(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("ruleId")
	rule, ok := s.readRule(w, r, id)
	if !ok {
		return
	}
	switch rule.RuleID {
	case "":
		rule.RuleID = id
	case id:
	default:
		writeError(w, http.StatusBadRequest, "invalid rule", RuleDetail{RuleID: id, Field: "ruleId",
			Error: fmt.Sprintf("ruleId %q in the body differs from %q in the path; a rule id cannot change", truncate(rule.RuleID, 140), id)})
		return
	}
	updated, err := s.deps.Rules.Update(r.Context(), rule, s.change(r))
	if err != nil {
		s.writeStoreError(w, r, id, err)
		return
	}
	writeRule(w, http.StatusOK, updated)
}

func (s *Server) handleDeleteRule(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("ruleId")
	if err := s.deps.Rules.Delete(r.Context(), id, s.change(r)); err != nil {
		s.writeStoreError(w, r, id, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleEnableRule returns the handler of /enable (true) or /disable (false).
// Any request body is ignored.
func (s *Server) handleEnableRule(enabled bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("ruleId")
		rule, err := s.deps.Rules.SetEnabled(r.Context(), id, enabled, s.change(r))
		if err != nil {
			s.writeStoreError(w, r, id, err)
			return
		}
		writeRule(w, http.StatusOK, rule)
	}
}

// change is who makes the request's change (the token's name) and its If-Match.
func (s *Server) change(r *http.Request) rulestore.Change {
	return rulestore.Change{Actor: tokenName(r.Context()), IfMatch: r.Header.Get("If-Match")}
}

// readRule reads one rule from the body, rejecting unknown keys. On failure
// it has answered; id names the rule in the details ("" on create).
func (s *Server) readRule(w http.ResponseWriter, r *http.Request, id string) (rules.Rule, bool) {
	body, ok := s.readJSONBodyLimit(w, r, s.cfg.MaxRuleBytes)
	if !ok {
		return rules.Rule{}, false
	}
	var rule rules.Rule
	if err := decodeStrict(body, &rule); err != nil {
		d := decodeDetail(0, err)
		d.RuleID = id
		writeError(w, http.StatusBadRequest, "invalid rule", d)
		return rules.Rule{}, false
	}
	return rule, true
}

// writeRule answers a rule with its ETag, for a later If-Match.
func writeRule(w http.ResponseWriter, status int, rule rules.Rule) {
	w.Header().Set("ETag", rulestore.ETag(rule))
	writeJSON(w, status, rule)
}

// writeStoreError maps the store's errors to statuses: 400 invalid rule,
// 404, 409 (id taken, or the rules file has an edit not loaded yet), 412
// stale If-Match or version (with the current ETag), 500 otherwise.
func (s *Server) writeStoreError(w http.ResponseWriter, r *http.Request, id string, err error) {
	var invalid *rulestore.InvalidError
	var fileChanged *rulestore.FileChangedError
	id = truncate(id, 140)
	switch {
	case errors.As(err, &invalid):
		writeError(w, http.StatusBadRequest, "invalid rule", ruleDetails(invalid.Err)...)
	case errors.Is(err, rulestore.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("rule %q not found", id))
	case errors.Is(err, rulestore.ErrExists):
		writeError(w, http.StatusConflict, fmt.Sprintf("rule %q already exists: change it with PUT", id))
	case errors.Is(err, rulestore.ErrPreconditionFailed):
		if cur, ok := s.deps.Rules.Get(id); ok {
			w.Header().Set("ETag", rulestore.ETag(cur))
		}
		writeError(w, http.StatusPreconditionFailed, err.Error()+": read the rule again and reapply your change")
	case errors.As(err, &fileChanged):
		if fileChanged.LoadErr == nil {
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusConflict, fileChanged.Error())
			return
		}
		writeError(w, http.StatusConflict, fmt.Sprintf("the rules file %s was edited and does not load; fix it first", fileChanged.Path),
			ruleDetails(fileChanged.LoadErr)...)
	default:
		// The cause (a file system error) is for the operator's log, not the client.
		s.log.Error("rules change failed", "method", r.Method, "path", r.URL.Path, "rule_id", id,
			"token_name", tokenName(r.Context()), "error", err)
		writeError(w, http.StatusInternalServerError, "the change could not be stored; nothing was changed (see the server log)")
	}
}

// truncate shortens s for an error message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
