package rules

import (
	"context"
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
	return s.Evaluate(context.Background(), ev, Evaluation{})
}

// Evaluate is Match within the set's budget: it waits for a slot of the
// set's Gate (or ctx's end), refuses an event whose rules' estimate at
// ev.Size is over the per-event time budget, and stops after the rule that
// exhausts it; both are a permanent *BudgetError, so the event is poisoned
// with the reason. With ev.Guard, an event whose estimate is large is
// marked while its conditions run (see CrashGuard).
func (s *Set) Evaluate(ctx context.Context, ev *event.Event, opts Evaluation) ([]task.Task, error) {
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
	guarded, err := s.admit(ev, list, opts)
	if err != nil {
		return nil, err
	}
	if err := s.gate.acquire(ctx); err != nil {
		return nil, err
	}
	// Deferred, so that not even a panic keeps a slot or leaves a mark
	// (which would read as a crash on the next delivery).
	defer s.gate.release()
	if guarded {
		if err := opts.Guard.Mark(ev.MessageID); err != nil {
			return nil, fmt.Errorf("mark event %s as being evaluated: %w", ev.MessageID, err)
		}
		defer opts.Guard.Unmark(ev.MessageID)
	}
	e := newEnv(ev)
	// Conditions run first so the task slice is allocated once, at its size:
	// growing a slice of tasks would be most of the bytes Match allocates.
	var stack [64]bool
	fired := stack[:0]
	n := 0
	var errs []error
	start := time.Now()
	for i, r := range list {
		ok, err := r.eval(e)
		if err != nil {
			errs = append(errs, err)
		}
		fired = append(fired, ok)
		if ok {
			n++
		}
		if r.cost != nil && i+1 < len(list) {
			if spent := time.Since(start); spent > s.budget.EventTime {
				errs = append(errs, &BudgetError{EventID: ev.MessageID, Reason: fmt.Sprintf(
					"its conditions took %s after rule %q, over rules.budget.event_time (%s); %d rules not evaluated",
					spent.Round(time.Millisecond), r.rule.RuleID, s.budget.EventTime, len(list)-i-1)})
				break
			}
		}
	}
	var tasks []task.Task
	if n > 0 {
		tasks = make([]task.Task, 0, n)
	}
	now := time.Now().UTC()
	for i, r := range list[:len(fired)] {
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

// guardAbove is the estimate at which an event is marked while evaluated.
var guardAbove = Cost{Memory: defaultGuardAboveMemory, Time: defaultGuardAboveTime}

// admit checks the estimate of list's conditions at the event's size
// against the per-event budget, and says whether the event needs a crash
// guard. Unknown size skips the check: the time spent is still bounded.
func (s *Set) admit(ev *event.Event, list []*compiledRule, opts Evaluation) (guard bool, err error) {
	if opts.Size <= 0 {
		return false, nil
	}
	var sum, worst Cost
	var costly *compiledRule
	for _, r := range list {
		c := r.cost.at(opts.Size)
		sum = sum.add(c)
		if c.Time >= worst.Time {
			worst, costly = c, r
		}
	}
	if sum.Time > s.budget.EventTime {
		return false, permanent.Wrap(&BudgetError{EventID: ev.MessageID, Reason: fmt.Sprintf(
			"the %d rules of type %q may take %s on an event of %s (estimate; rule %q alone %s), "+
				"over rules.budget.event_time (%s); nothing was evaluated",
			len(list), ev.EventType, sum.Time.Round(time.Millisecond), byteSize(int64(opts.Size)),
			costly.rule.RuleID, worst.Time.Round(time.Millisecond), s.budget.EventTime)})
	}
	return opts.Guard != nil && (sum.Time >= guardAbove.Time || worst.Memory >= guardAbove.Memory), nil
}

// Explain says, for every rule in order (disabled ones and those of other
// types too), what it did with ev: conditions run only for enabled rules of
// ev's type. Its Tasks are the ones Match would return.
func (s *Set) Explain(ev *event.Event) Report {
	rep, _ := s.ExplainContext(context.Background(), ev, Evaluation{})
	return rep
}

// ExplainContext is Explain within the set's budget, like Evaluate: it
// waits for a slot of the Gate until ctx ends (that wait is its only
// error), and a rule left unevaluated by the per-event budget carries the
// budget's reason as its Error.
func (s *Set) ExplainContext(ctx context.Context, ev *event.Event, opts Evaluation) (Report, error) {
	if ev == nil {
		ev = &event.Event{}
	}
	rep := Report{Tasks: []task.Task{}, Explanations: []Explanation{}}
	if s == nil {
		return rep, nil
	}
	words := strings.Split(ev.EventType, ".")
	var budgetErr error
	if _, err := s.admit(ev, s.idx.lookup(ev.EventType), Evaluation{Size: opts.Size}); err != nil {
		budgetErr = err
	}
	if err := s.gate.acquire(ctx); err != nil {
		return rep, err
	}
	defer s.gate.release()
	e := newEnv(ev)
	now := time.Now().UTC()
	start := time.Now()
	for _, r := range s.rules {
		x := Explanation{RuleID: r.rule.RuleID, Enabled: r.enabled, TypeMatched: r.matches(ev.EventType, words)}
		if x.Enabled && x.TypeMatched && budgetErr != nil {
			x.Error = budgetErr.Error()
		} else if x.Enabled && x.TypeMatched {
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
			if spent := time.Since(start); spent > s.budget.EventTime {
				budgetErr = &BudgetError{EventID: ev.MessageID, Reason: fmt.Sprintf(
					"its conditions took %s after rule %q, over rules.budget.event_time (%s); not evaluated",
					spent.Round(time.Millisecond), r.rule.RuleID, s.budget.EventTime)}
			}
		}
		rep.Explanations = append(rep.Explanations, x)
	}
	return rep, nil
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
var emptySet = &Set{idx: newIndex(nil), gate: defaultGate}

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

// Evaluate matches ev against the current rule set within its budget; see
// Set.Evaluate.
func (e *Engine) Evaluate(ctx context.Context, ev *event.Event, opts Evaluation) ([]task.Task, error) {
	return e.set.Load().Evaluate(ctx, ev, opts)
}
