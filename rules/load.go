package rules

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// maxAliasNodes bounds the YAML nodes visited through aliases per file, so
// a small file of nested aliases cannot expand into millions of values.
const maxAliasNodes = 100_000

// LoadFile reads and validates a rules file in the seed format; see Parse.
func LoadFile(path string, opts ...Option) ([]Rule, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load rules: %w", err)
	}
	return Parse(data, path, opts...)
}

// Parse reads rules in the seed format (a `taskTriggerRules:` list) and
// validates them as Compile does with opts (the budget of WithBudget, the
// task types of WithTaskTypes, ...). Every problem is returned, joined with
// errors.Join, each a *FieldError naming filename, line, rule id and key:
//
//	rules.yaml:12: rule "order-created-trigger": unknown key "conditon"
func Parse(data []byte, filename string, opts ...Option) ([]Rule, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", filename, err)
	}
	l := &loader{file: filename, budget: maxAliasNodes}
	for _, opt := range opts {
		opt(&l.opts)
	}
	rules, lines := l.document(&doc)
	// Validate even after structural errors, so one run lists every problem.
	l.validate(rules, lines)
	if len(l.errs) > 0 {
		return nil, errors.Join(l.errs...)
	}
	return rules, nil
}

// loader walks the YAML nodes, so every problem can carry its line.
type loader struct {
	opts   options
	file   string
	errs   []error
	budget int
	// aliased counts the aliases being walked through; nodes visited
	// inside one are charged to budget.
	aliased int
}

// keyLines maps a rule's field paths ("condition", "parameters.body.orderId")
// to their line, for errors found after decoding.
type keyLines struct {
	rule  int
	paths map[string]int
	// notRule is set when the item is not a mapping: it already has its
	// error, and "ruleId: required" and the like would only add noise.
	notRule bool
}

func (l *loader) fail(line int, ruleID, field, format string, args ...any) {
	l.errs = append(l.errs, &FieldError{File: l.file, Line: line, RuleID: ruleID, Field: field, Reason: fmt.Sprintf(format, args...)})
}

// resolve follows aliases and charges nodes reached through one to the
// budget. It returns nil once the budget is spent.
func (l *loader) resolve(n *yaml.Node) (_ *yaml.Node, alias bool) {
	for n != nil && n.Kind == yaml.AliasNode {
		n, alias = n.Alias, true
	}
	if alias || l.aliased > 0 {
		l.budget--
		if l.budget == 0 {
			l.fail(n.Line, "", "", "too many YAML nodes reached through aliases (more than %d)", maxAliasNodes)
		}
	}
	if n == nil || l.budget < 0 {
		return nil, alias
	}
	return n, alias
}

// deref is resolve for a node whose children are not walked.
func (l *loader) deref(n *yaml.Node) *yaml.Node {
	n, _ = l.resolve(n)
	return n
}

func (l *loader) document(doc *yaml.Node) ([]Rule, []keyLines) {
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return []Rule{}, nil // an empty file holds no rules
	}
	top := l.deref(doc.Content[0])
	if top == nil {
		return nil, nil
	}
	if top.Kind != yaml.MappingNode {
		l.fail(top.Line, "", "", "expected a mapping with the key taskTriggerRules")
		return nil, nil
	}
	var list *yaml.Node
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := top.Content[i], top.Content[i+1]
		switch {
		case k.Value != "taskTriggerRules":
			l.fail(k.Line, "", "", "unknown key %q (expected taskTriggerRules)", k.Value)
		case list != nil:
			l.fail(k.Line, "", "", "duplicate key %q", k.Value)
		default:
			list = l.deref(v)
		}
	}
	if list == nil || list.Tag == "!!null" {
		return []Rule{}, nil
	}
	if list.Kind != yaml.SequenceNode {
		l.fail(list.Line, "", "taskTriggerRules", "expected a list of rules")
		return nil, nil
	}
	rules := make([]Rule, 0, len(list.Content))
	lines := make([]keyLines, 0, len(list.Content))
	for i, item := range list.Content {
		r, kl := l.rule(item, i)
		rules = append(rules, r)
		lines = append(lines, kl)
	}
	return rules, lines
}

// rule decodes one rule, reporting unknown keys and ill-typed values.
func (l *loader) rule(n *yaml.Node, i int) (Rule, keyLines) {
	var r Rule
	kl := keyLines{rule: n.Line, paths: map[string]int{}}
	n, alias := l.resolve(n)
	if n == nil {
		return r, kl
	}
	if alias {
		l.aliased++
		defer func() { l.aliased-- }()
	}
	if n.Kind != yaml.MappingNode {
		l.fail(n.Line, ruleRef("", i), "", "expected a rule (a mapping with ruleId, eventType, ...)")
		kl.notRule = true
		return r, kl
	}
	// The id comes first so every other error can name the rule.
	for j := 0; j+1 < len(n.Content); j += 2 {
		if n.Content[j].Value == "ruleId" {
			if v := l.deref(n.Content[j+1]); v != nil && v.Kind == yaml.ScalarNode {
				r.RuleID = v.Value
			}
		}
	}
	id := ruleRef(r.RuleID, i)
	for j := 0; j+1 < len(n.Content); j += 2 {
		k, raw := n.Content[j], n.Content[j+1]
		v := l.deref(raw)
		if v == nil {
			return r, kl
		}
		key := k.Value
		if _, dup := kl.paths[key]; dup {
			l.fail(k.Line, id, "", "duplicate key %q", key)
			continue
		}
		kl.paths[key] = k.Line
		var err error
		switch key {
		case "ruleId":
			r.RuleID, err = scalarString(v)
		case "ruleName":
			r.RuleName, err = scalarString(v)
		case "eventType":
			r.EventType, err = scalarString(v)
		case "condition":
			r.Condition, err = scalarString(v)
		case "taskName":
			r.TaskName, err = scalarString(v)
		case "taskType":
			r.TaskType, err = scalarString(v)
		case "priority":
			r.Priority, err = scalarString(v)
		case "description":
			r.Description, err = scalarString(v)
		case "partitionKey":
			r.PartitionKey, err = scalarString(v)
		case "enabled", "version", "updatedAt":
			if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
				break // like an absent key: enabled stays nil, meaning true
			}
			err = typed(&r, key, v)
		case "parameters":
			if v.Tag == "!!null" {
				break
			}
			if v.Kind != yaml.MappingNode {
				err = errors.New("must be a mapping")
				break
			}
			p, _ := l.value(raw, "parameters", id, kl.paths, 0)
			r.Parameters, _ = p.(map[string]any)
		default:
			l.fail(k.Line, id, "", "unknown key %q", key)
		}
		if err != nil {
			l.fail(k.Line, id, key, "%v", err)
		}
	}
	return r, kl
}

// typed decodes the rule's non-string scalar fields.
func typed(r *Rule, key string, v *yaml.Node) error {
	var target any
	var want string
	switch key {
	case "enabled":
		r.Enabled = new(bool)
		target, want = r.Enabled, "true or false"
	case "version":
		target, want = &r.Version, "a whole number"
	case "updatedAt":
		target, want = &r.UpdatedAt, "an RFC 3339 time"
	}
	if v.Kind != yaml.ScalarNode {
		return fmt.Errorf("must be %s, got a mapping or list", want)
	}
	if v.Decode(target) != nil {
		return fmt.Errorf("must be %s, got %q", want, truncate(v.Value, 64))
	}
	return nil
}

func scalarString(v *yaml.Node) (string, error) {
	if v.Kind != yaml.ScalarNode {
		return "", errors.New("must be a string")
	}
	if v.Tag == "!!null" {
		return "", nil
	}
	return v.Value, nil
}

// value decodes a parameter value, recording the line of every key.
func (l *loader) value(n *yaml.Node, path, id string, paths map[string]int, depth int) (any, bool) {
	n, alias := l.resolve(n)
	if n == nil {
		return nil, false
	}
	if alias {
		l.aliased++
		defer func() { l.aliased-- }()
	}
	if depth > maxDepth {
		l.fail(n.Line, id, path, "nested deeper than %d levels", maxDepth)
		return nil, false
	}
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!timestamp" {
			return n.Value, true // kept as written, not turned into a time
		}
		var v any
		if err := n.Decode(&v); err != nil {
			l.fail(n.Line, id, path, "%v", err)
			return nil, false
		}
		return v, true
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		ok := true
		for j := 0; j+1 < len(n.Content); j += 2 {
			k, v := l.deref(n.Content[j]), n.Content[j+1]
			if k == nil {
				return nil, false
			}
			if k.Kind != yaml.ScalarNode || k.Tag == "!!merge" {
				l.fail(k.Line, id, path, "keys must be plain strings (merge keys << are not supported)")
				ok = false
				continue
			}
			sub := path + "." + k.Value
			if _, dup := m[k.Value]; dup {
				l.fail(k.Line, id, path, "duplicate key %q", k.Value)
				ok = false
				continue
			}
			paths[sub] = k.Line
			item, itemOK := l.value(v, sub, id, paths, depth+1)
			ok = ok && itemOK
			m[k.Value] = item
		}
		return m, ok
	case yaml.SequenceNode:
		a := make([]any, 0, len(n.Content))
		ok := true
		for j, c := range n.Content {
			sub := path + "[" + strconv.Itoa(j) + "]"
			paths[sub] = c.Line
			item, itemOK := l.value(c, sub, id, paths, depth+1)
			ok = ok && itemOK
			a = append(a, item)
		}
		return a, ok
	}
	l.fail(n.Line, id, path, "unsupported YAML node")
	return nil, false
}

// validate runs Compile's checks on the decoded rules and places each
// problem on the line of the key it is about.
func (l *loader) validate(rules []Rule, lines []keyLines) {
	_, probs := compile(rules, &l.opts, nil, nil)
	for i, ps := range probs {
		if lines[i].notRule {
			continue
		}
		for _, fe := range ps {
			fe.File = l.file
			fe.Line = lines[i].lineOf(fe.Field)
			l.errs = append(l.errs, fe)
		}
	}
}

// lineOf finds the line of the key a problem is about, or of the closest
// enclosing key, or of the rule.
func (kl keyLines) lineOf(field string) int {
	for p := field; p != ""; {
		if line, ok := kl.paths[p]; ok {
			return line
		}
		cut := strings.LastIndexAny(p, ".[")
		if cut < 0 {
			break
		}
		p = p[:cut]
	}
	return kl.rule
}
