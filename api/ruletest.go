package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/task"
)

// RuleDetail names one problem with one rule of a rejected request.
type RuleDetail struct {
	// RuleID is the rule's id, or "#n" (1-based position) when it has none.
	RuleID string `json:"ruleId,omitempty"`
	// Field is the key inside the rule, e.g. "condition"; "" for the rule as a whole.
	Field string `json:"field,omitempty"`
	// Error is the whole message; condition errors carry expr's line:column.
	Error string `json:"error"`
}

// FieldDetail names one problem with one field of a rejected request.
type FieldDetail struct {
	Field string `json:"field,omitempty"`
	Value string `json:"value,omitempty"`
	Error string `json:"error"`
}

// ruleTestRequest is the body of POST /api/v1/task-trigger-rules/test. Rules
// stay raw until the envelope is known to be well formed, so a bad rule is
// reported with its position.
type ruleTestRequest struct {
	Rule         json.RawMessage   `json:"rule"`
	Rules        []json.RawMessage `json:"rules"`
	EventMessage json.RawMessage   `json:"eventMessage"`
}

// handleRulesTest answers what the given rule(s) would do with an event:
// the tasks they would make and why each rule did or did not match. Without
// "rule" and "rules" it explains the event against the live rule set (when
// the server has a rule store). Nothing is stored or published. 400 lists
// every problem with the rules or the event.
func (s *Server) handleRulesTest(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readJSONBody(w, r)
	if !ok {
		return
	}
	var req ruleTestRequest
	if err := decodeStrict(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid request body: "+err.Error())
		return
	}
	raws := req.Rules
	// The live set is taken once, so the whole report is about one set.
	var live *rules.Set
	switch {
	case isAbsent(req.Rule) && req.Rules == nil && s.deps.Rules != nil:
		live = s.deps.Rules.Set()
	case isAbsent(req.Rule) && len(raws) == 0:
		writeError(w, http.StatusBadRequest, `"rule" or a non-empty "rules" is required`)
		return
	case !isAbsent(req.Rule) && len(raws) > 0:
		writeError(w, http.StatusBadRequest, `give either "rule" or "rules", not both`)
		return
	case !isAbsent(req.Rule):
		raws = []json.RawMessage{req.Rule}
	}
	// Every problem of the rules and of the event is reported in one answer.
	var ruleProblems, eventProblems []any
	rs := make([]rules.Rule, len(raws))
	for i, raw := range raws {
		if err := decodeStrict(raw, &rs[i]); err != nil {
			ruleProblems = append(ruleProblems, decodeDetail(i, err))
		}
	}
	set := live
	if set == nil && len(ruleProblems) == 0 {
		var err error
		if set, err = rules.Compile(rs, s.deps.RuleOptions...); err != nil {
			ruleProblems = ruleDetails(err)
		}
	}
	var ev *event.Event
	if isAbsent(req.EventMessage) {
		eventProblems = []any{FieldDetail{Field: "eventMessage", Error: `"eventMessage" is required`}}
	} else {
		var err error
		if ev, err = s.parser.Parse(req.EventMessage); err != nil {
			eventProblems = eventMessageDetails(err)
		}
	}
	switch {
	case len(ruleProblems) > 0 && len(eventProblems) > 0:
		writeError(w, http.StatusBadRequest, "invalid rules and eventMessage", append(ruleProblems, eventProblems...)...)
		return
	case len(ruleProblems) > 0:
		writeError(w, http.StatusBadRequest, "invalid rules", ruleProblems...)
		return
	case len(eventProblems) > 0:
		writeError(w, http.StatusBadRequest, "invalid eventMessage", eventProblems...)
		return
	}
	report, err := set.ExplainContext(r.Context(), ev, rules.Evaluation{Size: len(req.EventMessage)})
	if err != nil {
		// Every evaluation slot stayed busy until the request's deadline.
		unavailable(w, "dry run: "+err.Error())
		return
	}
	// Empty lists, not null, so clients can iterate without a check.
	if report.Tasks == nil {
		report.Tasks = []task.Task{}
	}
	if report.Explanations == nil {
		report.Explanations = []rules.Explanation{}
	}
	writeJSON(w, http.StatusOK, report)
}

// decodeStrict decodes one JSON value into v, rejecting unknown keys (a
// misspelt "conditon" must not silently test a rule without its condition)
// and trailing data.
func decodeStrict(data []byte, v any) error {
	if trimmed := bytes.TrimSpace(data); len(trimmed) == 0 || trimmed[0] != '{' {
		return errors.New("must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("unexpected data after the JSON value")
	}
	return nil
}

// decodeDetail describes why the i-th rule of a request does not decode,
// naming the field when the value has the wrong JSON type.
func decodeDetail(i int, err error) RuleDetail {
	d := RuleDetail{RuleID: fmt.Sprintf("#%d", i+1), Error: "decode rule: " + err.Error()}
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) && typeErr.Field != "" {
		d.Field = typeErr.Field
		d.Error = fmt.Sprintf("%s: must be %s, got %s", typeErr.Field, jsonKind(typeErr.Type.Kind().String()), typeErr.Value)
	}
	return d
}

// jsonKind names a Go kind the way a JSON client thinks of it.
func jsonKind(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "map", "struct":
		return "an object"
	case "slice", "array":
		return "an array"
	default:
		return "a number"
	}
}

// isAbsent reports whether a raw field was missing or null.
func isAbsent(raw json.RawMessage) bool {
	return len(raw) == 0 || string(raw) == "null"
}

// ruleDetails lists every rules.FieldError in err, in order.
func ruleDetails(err error) []any {
	var out []any
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case nil:
		case *rules.FieldError:
			out = append(out, RuleDetail{RuleID: e.RuleID, Field: e.Field, Error: e.Error()})
		case interface{ Unwrap() []error }:
			for _, inner := range e.Unwrap() {
				walk(inner)
			}
		default:
			if inner := errors.Unwrap(err); inner != nil {
				walk(inner)
				return
			}
			out = append(out, RuleDetail{Error: err.Error()})
		}
	}
	walk(err)
	return out
}

// eventMessageDetails lists the event's problems with fields under "eventMessage".
func eventMessageDetails(err error) []any {
	fes := event.FieldErrors(err)
	if len(fes) == 0 {
		return []any{FieldDetail{Field: "eventMessage", Error: err.Error()}}
	}
	out := make([]any, len(fes))
	for i, fe := range fes {
		field := "eventMessage"
		if fe.Field != "" {
			field += "." + fe.Field
		}
		out[i] = FieldDetail{Field: field, Value: fe.Value, Error: fe.Error()}
	}
	return out
}
