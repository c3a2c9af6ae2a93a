// Package rules turns events into tasks: the rule model and its seed YAML
// format, the event-type index (exact types and AMQP-style `*`/`#` patterns),
// expr conditions compiled once, and task templates rendered per event.
package rules

import (
	"bytes"
	"fmt"
	"time"

	"gopkg.in/yaml.v3"
)

// Rule is one trigger rule as written in the rules file or sent to the rules
// API: when an event of EventType satisfies Condition, make a task.
type Rule struct {
	RuleID   string `json:"ruleId" yaml:"ruleId"`
	RuleName string `json:"ruleName,omitempty" yaml:"ruleName,omitempty"`
	// EventType is an exact type or an AMQP-style pattern: `*` matches one
	// word, `#` zero or more words (`order.*`, `order.#`).
	EventType string `json:"eventType" yaml:"eventType"`
	// Condition is an expr-lang boolean expression; empty means true.
	Condition string `json:"condition,omitempty" yaml:"condition,omitempty"`
	// TaskName is a template; empty means the rule id.
	TaskName string `json:"taskName,omitempty" yaml:"taskName,omitempty"`
	// TaskType names the executor that runs the task.
	TaskType string `json:"taskType" yaml:"taskType"`
	// Parameters are templates at every depth; parameters.timeout (seconds)
	// becomes the task's timeout.
	Parameters map[string]any `json:"parameters,omitempty" yaml:"parameters,omitempty"`
	// Priority is HIGH, MEDIUM or LOW in any case; empty means the event's.
	Priority string `json:"priority,omitempty" yaml:"priority,omitempty"`
	// Enabled nil means true, so rules written without it are active.
	Enabled     *bool  `json:"enabled,omitempty" yaml:"enabled,omitempty"`
	Description string `json:"description,omitempty" yaml:"description,omitempty"`
	// PartitionKey is a template; empty means the event id.
	PartitionKey string    `json:"partitionKey,omitempty" yaml:"partitionKey,omitempty"`
	Version      int64     `json:"version,omitempty" yaml:"version,omitempty"`
	UpdatedAt    time.Time `json:"updatedAt,omitzero" yaml:"updatedAt,omitempty"`
}

// IsEnabled reports whether the rule is active: Enabled is nil or true.
func (r *Rule) IsEnabled() bool { return r.Enabled == nil || *r.Enabled }

// FieldError is one problem in a rule. Parse and LoadFile fill File and
// Line; Compile leaves them empty. Loaders and Compile return every
// FieldError joined with errors.Join, so callers can list them all.
type FieldError struct {
	File string
	Line int
	// RuleID is the rule's id, or "#n" (1-based position) when it has none.
	RuleID string
	// Field is the key path inside the rule, e.g. "condition" or
	// "parameters.body.orderId"; empty when the problem is the key itself.
	Field  string
	Reason string
}

func (e *FieldError) Error() string {
	var b bytes.Buffer
	if e.File != "" {
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	}
	if e.RuleID != "" {
		if e.RuleID[0] == '#' {
			fmt.Fprintf(&b, "rule %s: ", e.RuleID)
		} else {
			fmt.Fprintf(&b, "rule %q: ", e.RuleID)
		}
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Reason)
	return b.String()
}

// rulesFile is the seed layout of a rules file.
type rulesFile struct {
	TaskTriggerRules []Rule `yaml:"taskTriggerRules"`
}

// MarshalYAML writes rs in the seed format that Parse reads back, so a rule
// set edited through the API can be persisted as a rules file.
func MarshalYAML(rs []Rule) ([]byte, error) {
	parts := make([][]byte, len(rs))
	for i := range rs {
		var err error
		if parts[i], err = MarshalRuleYAML(rs[i]); err != nil {
			return nil, err
		}
	}
	return JoinYAML(parts), nil
}

// rulesKey is the line every rules file starts with.
const rulesKey = "taskTriggerRules:\n"

// MarshalRuleYAML writes one rule as an item of the taskTriggerRules list;
// JoinYAML makes a rules file of such items. A store that keeps each rule's
// item writes a change of one rule without encoding every other again.
func MarshalRuleYAML(r Rule) ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(rulesFile{TaskTriggerRules: []Rule{r}}); err != nil {
		return nil, fmt.Errorf("marshal rule %q: %w", r.RuleID, err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("marshal rule %q: %w", r.RuleID, err)
	}
	return bytes.TrimPrefix(b.Bytes(), []byte(rulesKey)), nil
}

// JoinYAML makes a rules file of items from MarshalRuleYAML, in order.
func JoinYAML(items [][]byte) []byte {
	if len(items) == 0 {
		return []byte("taskTriggerRules: []\n")
	}
	n := len(rulesKey)
	for _, it := range items {
		n += len(it)
	}
	out := make([]byte, 0, n)
	out = append(out, rulesKey...)
	for _, it := range items {
		out = append(out, it...)
	}
	return out
}
