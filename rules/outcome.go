package rules

import (
	"errors"
	"strings"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/task"
)

// Outcome is what one rule of an event's type did with it, as recorded in
// the event's history: the dry-run Explanation, told from what Match
// returned instead of by evaluating anything again.
type Outcome struct {
	RuleID string `json:"ruleId"`
	// Version is the rule's version in the set that matched the event.
	Version int64 `json:"version,omitempty"`
	Enabled bool  `json:"enabled"`
	// ConditionResult is nil when the condition was not evaluated (rule
	// disabled) or failed to evaluate (see Error).
	ConditionResult *bool `json:"conditionResult"`
	// Error is the rule's condition runtime error or template error.
	Error string `json:"error,omitempty"`
	// TaskID is the task the rule made, "" when none.
	TaskID string `json:"taskId,omitempty"`
}

// Outcomes tells, for each rule of ev's type in rule order (disabled ones
// too), what it did with ev, given what s.Match(ev) returned: tasks and err.
// It evaluates nothing, so it is cheap enough to run for every event off
// the hot path. At most limit outcomes are returned (0 = all), and how many
// more rules of the type there were.
func (s *Set) Outcomes(ev *event.Event, tasks []task.Task, err error, limit int) (out []Outcome, more int) {
	if s == nil || ev == nil {
		return nil, 0
	}
	failed := ruleErrors(err)
	words := strings.Split(ev.EventType, ".")
	for _, r := range s.rules {
		if !r.matches(ev.EventType, words) {
			continue
		}
		if limit > 0 && len(out) >= limit {
			more++
			continue
		}
		o := Outcome{RuleID: r.rule.RuleID, Version: r.rule.Version, Enabled: r.enabled}
		if r.enabled {
			o.ConditionResult, o.Error, o.TaskID = outcomeOf(r.rule.RuleID, tasks, failed[r.rule.RuleID])
		}
		out = append(out, o)
	}
	return out, more
}

// outcomeOf derives an enabled rule's condition result from its task or
// its error: a condition error leaves the result unknown, a template error
// means the condition held, and no task and no error means it did not.
func outcomeOf(ruleID string, tasks []task.Task, fe *FieldError) (*bool, string, string) {
	for i := range tasks {
		if tasks[i].RuleID == ruleID {
			return ptr(true), "", tasks[i].TaskID
		}
	}
	if fe != nil {
		if fe.Field == "condition" {
			return nil, fe.Error(), ""
		}
		return ptr(true), fe.Error(), ""
	}
	return ptr(false), "", ""
}

// ruleErrors indexes the rule errors joined in err by rule id.
func ruleErrors(err error) map[string]*FieldError {
	if err == nil {
		return nil
	}
	out := map[string]*FieldError{}
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case nil:
		case *FieldError:
			if _, seen := out[e.RuleID]; !seen {
				out[e.RuleID] = e
			}
		case interface{ Unwrap() []error }:
			for _, inner := range e.Unwrap() {
				walk(inner)
			}
		default:
			walk(errors.Unwrap(err))
		}
	}
	walk(err)
	return out
}
