package rulestore

import (
	"encoding/json"
	"math"
	"reflect"
	"time"

	"github.com/eventpipe/eventpipe/rules"
)

// diff names the fields that differ between a and b, by their JSON keys;
// version and updatedAt are not compared. Enabled compares by effect, so an
// absent `enabled` equals `enabled: true`.
func diff(a, b rules.Rule) []string {
	var out []string
	add := func(field string, same bool) {
		if !same {
			out = append(out, field)
		}
	}
	add("ruleId", a.RuleID == b.RuleID)
	add("ruleName", a.RuleName == b.RuleName)
	add("eventType", a.EventType == b.EventType)
	add("condition", a.Condition == b.Condition)
	add("taskName", a.TaskName == b.TaskName)
	add("taskType", a.TaskType == b.TaskType)
	add("parameters", sameParameters(a.Parameters, b.Parameters))
	add("priority", a.Priority == b.Priority)
	add("enabled", a.IsEnabled() == b.IsEnabled())
	add("description", a.Description == b.Description)
	add("partitionKey", a.PartitionKey == b.PartitionKey)
	return out
}

// sameParameters compares parameters by their JSON form, so the float64 3600
// the API decodes equals the int 3600 the YAML loader gives.
func sameParameters(a, b map[string]any) bool {
	if len(a) == 0 && len(b) == 0 {
		return true
	}
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	if errA != nil || errB != nil {
		return reflect.DeepEqual(a, b)
	}
	return string(ja) == string(jb)
}

// ruleChange is what a whole-set change did to one rule.
type ruleChange struct {
	op      string // create, update or delete
	rule    rules.Rule
	changed []string
}

// reconcile versions the rules of a whole new set against the current state:
// an unchanged rule keeps its version and updatedAt; a changed one gets the
// next version (or the one it carries, when an editor raised it) stamped
// now; a new one keeps the version and updatedAt it carries, else 1 and now.
func reconcile(cur *state, next []rules.Rule, now time.Time) ([]rules.Rule, []ruleChange) {
	out := make([]rules.Rule, len(next))
	var changes []ruleChange
	seen := make(map[string]bool, len(next))
	for i, r := range next {
		r = canonical(r)
		seen[r.RuleID] = true
		j, existed := cur.index[r.RuleID]
		switch {
		case !existed:
			if r.Version <= 0 {
				r.Version = 1
			}
			if r.UpdatedAt.IsZero() {
				r.UpdatedAt = now
			}
			changes = append(changes, ruleChange{op: "create", rule: r})
		default:
			old := cur.rules[j]
			changed := diff(old, r)
			if len(changed) == 0 {
				r.Version, r.UpdatedAt = old.Version, old.UpdatedAt
				break
			}
			if r.Version <= old.Version {
				r.Version = old.Version + 1
			}
			r.UpdatedAt = now
			changes = append(changes, ruleChange{op: "update", rule: r, changed: changed})
		}
		out[i] = r
	}
	for _, r := range cur.rules {
		if !seen[r.RuleID] {
			changes = append(changes, ruleChange{op: "delete", rule: r})
		}
	}
	return out, changes
}

// maxExactInt is 2^53: integral float64 values up to it are exact integers.
const maxExactInt = 1 << 53

// canonical copies r deeply with every integral number in its parameters as
// an int, as the YAML loader reads it: JSON gives the API float64 3600, the
// rules file gives int 3600, and a restart must give back exactly the rules
// the API stored.
func canonical(r rules.Rule) rules.Rule {
	r = cloneRule(r)
	if r.Parameters != nil {
		r.Parameters = intsOf(r.Parameters).(map[string]any)
	}
	return r
}

func intsOf(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, item := range x {
			x[k] = intsOf(item)
		}
	case []any:
		for i, item := range x {
			x[i] = intsOf(item)
		}
	case float64:
		if x == math.Trunc(x) && math.Abs(x) <= maxExactInt {
			return int(x)
		}
	}
	return v
}

// cloneRule copies r deeply, so callers never share maps with a snapshot.
func cloneRule(r rules.Rule) rules.Rule {
	if r.Enabled != nil {
		b := *r.Enabled
		r.Enabled = &b
	}
	if r.Parameters != nil {
		r.Parameters = cloneValue(r.Parameters).(map[string]any)
	}
	return r
}

func cloneValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, item := range x {
			m[k] = cloneValue(item)
		}
		return m
	case []any:
		a := make([]any, len(x))
		for i, item := range x {
			a[i] = cloneValue(item)
		}
		return a
	}
	return v
}
