package rules

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/task"
)

// Report is what Explain returns: the tasks an event makes and why each rule
// did or did not make one.
type Report struct {
	Tasks        []task.Task   `json:"tasks"`
	Explanations []Explanation `json:"explanations"`
}

// Explanation tells what one rule did with an event.
type Explanation struct {
	RuleID      string `json:"ruleId"`
	Enabled     bool   `json:"enabled"`
	TypeMatched bool   `json:"typeMatched"`
	// ConditionResult is nil when the condition was not evaluated (rule
	// disabled, type not matched, or an evaluation error).
	ConditionResult *bool `json:"conditionResult"`
	// Error is a condition runtime error or a template error.
	Error string     `json:"error,omitempty"`
	Task  *task.Task `json:"task,omitempty"`
}

// Rules returns a copy of the set's rules in order.
func (s *Set) Rules() []Rule {
	if s == nil {
		return nil
	}
	rs := make([]Rule, len(s.rules))
	for i, r := range s.rules {
		rs[i] = r.rule
		if r.rule.Enabled != nil {
			rs[i].Enabled = ptr(*r.rule.Enabled)
		}
		if r.hasParams {
			rs[i].Parameters = r.params.source().(map[string]any)
		}
	}
	return rs
}

// Match returns the tasks ev triggers, in rule order. Only enabled rules of
// ev's type are looked at. It returns every task it could make; rules that
// fail (condition runtime error, template error) are joined into the error,
// marked permanent because the same event fails the same way again, each
// naming its rule id.
func (s *Set) Match(ev *event.Event) ([]task.Task, error) {
	if ev == nil {
		return nil, permanent.Wrap(errors.New("match: nil event"))
	}
	if s == nil {
		return nil, nil
	}
	list := s.idx.lookup(ev.EventType)
	if len(list) == 0 {
		return nil, nil
	}
	e := newEnv(ev)
	// Conditions run first so the task slice is allocated once, at its size:
	// growing a slice of tasks would be most of the bytes Match allocates.
	var stack [64]bool
	fired := stack[:0]
	n := 0
	var errs []error
	for _, r := range list {
		ok, err := r.eval(e)
		if err != nil {
			errs = append(errs, err)
		}
		fired = append(fired, ok)
		if ok {
			n++
		}
	}
	var tasks []task.Task
	if n > 0 {
		tasks = make([]task.Task, 0, n)
	}
	now := time.Now().UTC()
	for i, r := range list {
		if !fired[i] {
			continue
		}
		t, err := r.makeTask(ev, e, now)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		tasks = append(tasks, t)
	}
	if len(errs) > 0 {
		return tasks, permanent.Wrap(errors.Join(errs...))
	}
	return tasks, nil
}

// Explain says, for every rule in order (disabled ones and those of other
// types too), what it did with ev: conditions run only for enabled rules of
// ev's type. Its Tasks are the ones Match would return.
func (s *Set) Explain(ev *event.Event) Report {
	if ev == nil {
		ev = &event.Event{}
	}
	rep := Report{Tasks: []task.Task{}, Explanations: []Explanation{}}
	if s == nil {
		return rep
	}
	e := newEnv(ev)
	words := strings.Split(ev.EventType, ".")
	now := time.Now().UTC()
	for _, r := range s.rules {
		x := Explanation{RuleID: r.rule.RuleID, Enabled: r.enabled, TypeMatched: r.matches(ev.EventType, words)}
		if x.Enabled && x.TypeMatched {
			ok, err := r.eval(e)
			if err == nil {
				x.ConditionResult = &ok
				if ok {
					var t task.Task
					if t, err = r.makeTask(ev, e, now); err == nil {
						x.Task = &t
						rep.Tasks = append(rep.Tasks, t)
					}
				}
			}
			if err != nil {
				x.Error = err.Error()
			}
		}
		rep.Explanations = append(rep.Explanations, x)
	}
	return rep
}

// eval runs the rule's condition on a pooled VM.
func (r *compiledRule) eval(e *env) (bool, error) {
	if r.program == nil {
		return true, nil
	}
	m := vms.Get().(*vm.VM)
	out, err := m.Run(r.program, e)
	vms.Put(m)
	if err != nil {
		reason := err.Error()
		var fe *file.Error
		if errors.As(err, &fe) {
			reason = fmt.Sprintf("%d:%d: %s", fe.Line, fe.Column+1, fe.Message)
			if fe.Message == errMemoryBudget {
				reason += fmt.Sprintf(" (a condition may build at most %d list items per event, ranges included)",
					conditionMemoryBudget)
			}
		}
		return false, &FieldError{RuleID: r.rule.RuleID, Field: "condition", Reason: "evaluation failed at " + reason}
	}
	b, ok := out.(bool)
	if !ok {
		return false, &FieldError{RuleID: r.rule.RuleID, Field: "condition", Reason: fmt.Sprintf("result is %T, not a boolean", out)}
	}
	return b, nil
}

// makeTask renders the rule's task for ev.
func (r *compiledRule) makeTask(ev *event.Event, e *env, now time.Time) (task.Task, error) {
	fail := func(field string, err error) (task.Task, error) {
		var fe *FieldError
		if errors.As(err, &fe) {
			fe.RuleID = r.rule.RuleID
			return task.Task{}, fe
		}
		return task.Task{}, &FieldError{RuleID: r.rule.RuleID, Field: field, Reason: err.Error()}
	}
	name, err := r.taskName.renderString(e, modePlain)
	if err != nil {
		return fail("taskName", err)
	}
	if name == "" {
		return fail("taskName", errors.New("renders to an empty string"))
	}
	key, err := r.partition.renderString(e, modePlain)
	if err != nil {
		return fail("partitionKey", err)
	}
	if key == "" {
		key = ev.MessageID
	}
	v, err := r.params.render(e)
	if err != nil {
		return fail("", under(err, "parameters"))
	}
	params := v.(map[string]any)
	timeout := 0
	if t, ok := params["timeout"]; ok {
		if timeout, err = timeoutSeconds(t); err != nil {
			return fail("parameters.timeout", err)
		}
	}
	prio := r.priority
	if prio == "" {
		prio = string(ev.Priority)
	}
	if prio == "" {
		prio = string(event.PriorityMedium)
	}
	return task.Task{
		TaskID:       task.ID(ev.MessageID, r.rule.RuleID),
		TaskName:     name,
		TaskType:     r.rule.TaskType,
		Priority:     prio,
		Parameters:   params,
		Timeout:      timeout,
		RuleID:       r.rule.RuleID,
		EventID:      ev.MessageID,
		EventType:    ev.EventType,
		TraceID:      ev.TraceID(),
		PartitionKey: key,
		CreatedAt:    now,
	}, nil
}

// emptySet is what an Engine holds before it is given rules.
var emptySet = &Set{idx: newIndex(nil)}

// Engine holds the current rule set and lets it be replaced while events
// are being matched: each Match sees one whole set, old or new.
type Engine struct {
	set atomic.Pointer[Set]
}

// NewEngine returns an Engine holding s; a nil s means no rules.
func NewEngine(s *Set) *Engine {
	e := &Engine{}
	e.Swap(s)
	return e
}

// Set returns the current rule set, never nil.
func (e *Engine) Set() *Set { return e.set.Load() }

// Swap replaces the rule set; a nil s means no rules.
func (e *Engine) Swap(s *Set) {
	if s == nil {
		s = emptySet
	}
	e.set.Store(s)
}

// Match matches ev against the current rule set; see Set.Match.
func (e *Engine) Match(ev *event.Event) ([]task.Task, error) {
	return e.set.Load().Match(ev)
}
