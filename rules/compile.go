package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/parser"
	"github.com/expr-lang/expr/vm"

	"github.com/eventpipe/eventpipe/event"
)

// env is what a condition sees. It is built once per event and shared by
// every rule's condition and templates. Its fields must be exported for expr.
type env struct {
	Payload   map[string]any `expr:"payload"`
	Metadata  map[string]any `expr:"metadata"`
	EventType string         `expr:"eventType"`
	Source    string         `expr:"source"`
	MessageID string         `expr:"messageId"`
	// Timestamp is RFC 3339, so conditions compare it as a string.
	Timestamp string `expr:"timestamp"`
	Priority  string `expr:"priority"`
}

func newEnv(ev *event.Event) *env {
	e := &env{
		Payload:   ev.Payload,
		Metadata:  ev.Metadata,
		EventType: ev.EventType,
		Source:    ev.Source,
		MessageID: ev.MessageID,
		Priority:  string(ev.Priority),
	}
	if !ev.Timestamp.IsZero() {
		e.Timestamp = ev.Timestamp.Format(time.RFC3339Nano)
	}
	return e
}

const (
	// maxConditionLen bounds a condition: the expr VM has no timeout, so
	// the size of what it runs is limited at the source.
	maxConditionLen = 4 << 10
	// maxTimeout (a year, in seconds) keeps Task.Timeout far from
	// time.Duration overflow.
	maxTimeout = 366 * 24 * 3600
)

var ruleIDPattern = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// vms reuses expr VMs so that evaluating a condition does not allocate a VM
// and its stack per call. Run resets the memory used, not the budget.
var vms = sync.Pool{New: func() any { return &vm.VM{MemoryBudget: conditionMemoryBudget} }}

// Option configures Compile.
type Option func(*options)

type options struct {
	taskTypes map[string]bool
	budget    Budget
	gate      *Gate
	checks    []RuleCheck
}

// RuleCheck is a check a rule must pass to be accepted, beyond the rules
// package's own (id, event type, task type, condition and its cost,
// templates). It returns the rule's problems, each naming its field; the
// rule id and, in files, the line are filled in by the caller. Executors'
// parameter specs plug in here, so the rules file, the rules API and dry
// runs refuse the same rules for the same reasons.
type RuleCheck func(r *Rule) []*FieldError

// WithRuleCheck adds a check every rule must pass (see RuleCheck).
func WithRuleCheck(check RuleCheck) Option {
	return func(o *options) { o.checks = append(o.checks, check) }
}

// WithTaskTypes makes Compile reject a rule whose taskType is not one of
// names, so a typo fails at load time instead of poisoning every task.
func WithTaskTypes(names ...string) Option {
	return func(o *options) {
		if o.taskTypes == nil {
			o.taskTypes = map[string]bool{} // even empty: no name is known
		}
		for _, n := range names {
			o.taskTypes[n] = true
		}
	}
}

// compiledRule is a validated rule with its condition program, templates and
// type pattern, all built once.
type compiledRule struct {
	rule    Rule
	order   int // position in the set, which is the order of results
	enabled bool
	// patternWords is nil for an exact type.
	patternWords []string
	program      *vm.Program
	// cost bounds the condition's cost per event size (nil: no condition).
	cost      *costLadder
	priority  string // upper case, or "" for the event's
	taskName  *template
	partition *template
	params    node
	// hasParams keeps a nil Parameters nil in Rules; rule.Parameters
	// itself is dropped, params holds it.
	hasParams bool
}

// matches reports whether the rule's event type matches typ, split into words.
func (r *compiledRule) matches(typ string, words []string) bool {
	if r.patternWords == nil {
		return r.rule.EventType == typ
	}
	return matchWords(r.patternWords, words)
}

// Set is an immutable, compiled rule set. It is safe for concurrent use.
type Set struct {
	rules  []*compiledRule
	idx    *index
	budget Budget
	gate   *Gate
}

// Compile validates and compiles rs. It returns every problem of every rule,
// joined with errors.Join, each a *FieldError naming the rule id and field;
// condition errors carry expr's line:column position.
func Compile(rs []Rule, opts ...Option) (*Set, error) {
	return Recompile(nil, rs, nil, opts...)
}

// Recompile is Compile for next, a changed copy of the rules prev was
// compiled from: every rule for which unchanged(i) is true and whose id is
// in prev is taken from prev instead of compiled again, so changing one rule
// of a large set compiles one rule. opts must be the ones prev was compiled
// with.
func Recompile(prev *Set, next []Rule, unchanged func(i int) bool, opts ...Option) (*Set, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	o.budget.SetDefaults()
	if err := o.budget.Validate(); err != nil {
		return nil, err
	}
	if len(next) > o.budget.MaxRules {
		return nil, fmt.Errorf("%d rules, more than %d (rules.budget.max_rules)", len(next), o.budget.MaxRules)
	}
	s, probs := compile(next, &o, prev, unchanged)
	var errs []error
	for _, ps := range probs {
		for _, p := range ps {
			errs = append(errs, p)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	s.idx = newIndex(s.rules)
	return s, nil
}

// compile returns the compiled rules and, per rule, its problems. The
// caller builds the index once there are none.
func compile(rs []Rule, o *options, prev *Set, unchanged func(i int) bool) (*Set, [][]*FieldError) {
	o.budget.SetDefaults()
	s := &Set{rules: make([]*compiledRule, 0, len(rs)), budget: o.budget, gate: o.gate}
	if s.gate == nil {
		s.gate = defaultGate
	}
	probs := make([][]*FieldError, len(rs))
	seen := make(map[string]bool, len(rs))
	var reuse map[string]*compiledRule
	if prev != nil && unchanged != nil {
		reuse = make(map[string]*compiledRule, len(prev.rules))
		for _, r := range prev.rules {
			reuse[r.rule.RuleID] = r
		}
	}
	for i := range rs {
		var cr *compiledRule
		var ps []*FieldError
		if old, ok := reuse[rs[i].RuleID]; ok && unchanged(i) {
			cp := *old // order differs; the rest is read-only once compiled
			cr = &cp
		} else {
			cr, ps = compileRule(rs[i], o)
		}
		if id := rs[i].RuleID; id != "" {
			if seen[id] {
				ps = append(ps, &FieldError{Field: "ruleId", Reason: fmt.Sprintf("duplicate ruleId %q", truncate(id, 140))})
			}
			seen[id] = true
		}
		for _, p := range ps {
			p.RuleID = ruleRef(rs[i].RuleID, i)
		}
		probs[i] = ps
		cr.order = i
		s.rules = append(s.rules, cr)
	}
	return s, probs
}

// ruleRef names a rule in errors: its id, or its 1-based position.
func ruleRef(id string, i int) string {
	if id != "" && len(id) <= 128 {
		return id
	}
	return "#" + strconv.Itoa(i+1)
}

// compileRule validates r and builds what matching needs. It is the one
// place that decides whether a rule is acceptable, for the rules file, the
// rules API and dry runs alike: its own checks, the condition's cost within
// the budget (WithBudget), and the checks given with WithRuleCheck. It
// returns every problem; the rule is usable only when there are none.
func compileRule(r Rule, o *options) (*compiledRule, []*FieldError) {
	var probs []*FieldError
	add := func(field, format string, args ...any) {
		probs = append(probs, &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	cr := &compiledRule{rule: r, enabled: r.IsEnabled(), hasParams: r.Parameters != nil}
	cr.rule.Parameters = nil
	if r.Enabled != nil {
		cr.rule.Enabled = ptr(*r.Enabled)
	}

	if !ruleIDPattern.MatchString(r.RuleID) {
		if r.RuleID == "" {
			add("ruleId", "required")
		} else {
			add("ruleId", "%q must be 1 to 128 characters of A-Z a-z 0-9 . _ : -", truncate(r.RuleID, 140))
		}
	}

	if isPattern, err := checkPattern(r.EventType); err != nil {
		add("eventType", "%v", err)
	} else if isPattern {
		cr.patternWords = strings.Split(r.EventType, ".")
	}

	switch {
	case r.TaskType == "":
		add("taskType", "required")
	case o.taskTypes != nil && !o.taskTypes[r.TaskType]:
		known := strings.Join(sortedKeys(o.taskTypes), ", ")
		if known == "" {
			known = "none registered"
		}
		add("taskType", "unknown executor %q (known: %s)", r.TaskType, known)
	}

	switch p := strings.ToUpper(r.Priority); p {
	case "", string(event.PriorityHigh), string(event.PriorityMedium), string(event.PriorityLow):
		cr.priority = p
	default:
		add("priority", "%q must be HIGH, MEDIUM or LOW", truncate(r.Priority, 64))
	}

	if prog, cost, err := compileCondition(r.Condition, &o.budget); err != nil {
		add("condition", "%v", err)
	} else {
		cr.program, cr.cost = prog, cost
	}

	name := r.TaskName
	if name == "" {
		name = r.RuleID
	}
	cr.taskName = stringTemplate("taskName", name, &probs)
	cr.partition = defaultPartition
	if r.PartitionKey != "" {
		cr.partition = stringTemplate("partitionKey", r.PartitionKey, &probs)
	}

	params := r.Parameters
	if params == nil {
		params = map[string]any{}
	}
	cr.params = compileValue(params, "parameters", 0, &probs)
	checkParams(r.TaskType, &cr.params, &probs)
	for _, check := range o.checks {
		probs = append(probs, check(&r)...)
	}
	return cr, probs
}

// defaultPartition keys tasks by event id; shared, since templates are
// read-only once compiled.
var defaultPartition, _ = parseTemplate("${eventId}")

func ptr[T any](v T) *T { return &v }

func stringTemplate(field, s string, probs *[]*FieldError) *template {
	t, err := parseTemplate(s)
	if err != nil {
		*probs = append(*probs, &FieldError{Field: field, Reason: err.Error()})
	}
	return t
}

// compileCondition compiles a condition once and bounds its cost within b.
// Empty means true (nil program, no cost).
func compileCondition(cond string, b *Budget) (*vm.Program, *costLadder, error) {
	if strings.TrimSpace(cond) == "" {
		return nil, nil, nil
	}
	if len(cond) > maxConditionLen {
		return nil, nil, fmt.Errorf("longer than %d bytes", maxConditionLen)
	}
	// Refusals look at the condition as written, before expr compiles it.
	// A syntax error is left for expr.Compile to report.
	tree, parseErr := parser.Parse(cond)
	at := func(n ast.Node) string {
		fe := (&file.Error{Location: n.Location()}).Bind(tree.Source)
		return fmt.Sprintf("%d:%d", fe.Line, fe.Column+1)
	}
	// Problems found by the cost model point at where the costly part
	// begins, which reads better than expr's operator position.
	atStart := func(n ast.Node) string {
		fe := (&file.Error{Location: start(n)}).Bind(tree.Source)
		return fmt.Sprintf("%d:%d", fe.Line, fe.Column+1)
	}
	if parseErr == nil {
		if n, reason := refusal(tree.Node); n != nil {
			return nil, nil, fmt.Errorf("%s: %s", at(n), reason)
		}
	}
	prog, err := expr.Compile(cond, conditionOptions...)
	if err != nil {
		var fe *file.Error
		if !errors.As(err, &fe) {
			// Errors about the whole condition (AsBool's "expected bool")
			// carry no position: the whole condition starts at 1:1.
			return nil, nil, fmt.Errorf("1:1: %w", err)
		}
		return nil, nil, fmt.Errorf("%d:%d: %s", fe.Line, fe.Column+1, fe.Message)
	}
	// AsBool only rejects a result whose type is known; `payload.amount + 1`
	// has an unknown type and would fail on every event, so catch it here.
	if n := prog.Node(); notBool(n) {
		fe := (&file.Error{Location: n.Location()}).Bind(prog.Source())
		return nil, nil, fmt.Errorf("%d:%d: expected a boolean condition, got a %s", fe.Line, fe.Column+1, describe(n))
	}
	if n, what := unknownResult(tree.Node); n != nil {
		return nil, nil, fmt.Errorf("%s: expected a boolean condition, but %s may be any value, and every event where it "+
			"is not a boolean would be poisoned: compare it (%s == true, %s > 0, %s != \"\")", atStart(n), what, what, what, what)
	}
	cost, err := costOf(tree.Node, b, atStart)
	if err != nil {
		return nil, nil, err
	}
	return prog, cost, nil
}

// start is where n's text begins: expr places a member access on its
// dot, and a binary expression on its operator.
func start(n ast.Node) file.Location {
	var f firstLocation
	f.loc = n.Location()
	ast.Walk(&n, &f)
	return f.loc
}

type firstLocation struct{ loc file.Location }

func (f *firstLocation) Visit(n *ast.Node) {
	if l := (*n).Location(); l.From < f.loc.From && (l.From > 0 || l.To > 0) {
		f.loc = l
	}
}

// costOf estimates a condition at every ladder size up to the largest event
// and refuses it when its cost there is over the budget, naming the part
// that costs most.
func costOf(root ast.Node, b *Budget, position func(ast.Node) string) (*costLadder, error) {
	l := &costLadder{}
	for _, size := range ladder {
		if size >= b.MaxEventBytes {
			break
		}
		c, _, _, _ := estimate(root, size, b.MaxRegexpProgram)
		l.sizes, l.costs = append(l.sizes, size), append(l.costs, c)
	}
	c, refused, reason, top := estimate(root, b.MaxEventBytes, b.MaxRegexpProgram)
	if refused != nil {
		return nil, fmt.Errorf("%s: %s", position(refused), reason)
	}
	l.sizes, l.costs = append(l.sizes, b.MaxEventBytes), append(l.costs, c)
	if c.Memory <= b.ConditionMemory && c.Time <= b.ConditionTime {
		return l, nil
	}
	where := position(root)
	what := ""
	if top != nil {
		where, what = position(top), fmt.Sprintf(" most of it in %s;", truncate(top.String(), 60))
	}
	return nil, fmt.Errorf("%s: on an event of %s this condition may allocate %s and take %s, over the budget of %s "+
		"(rules.budget.condition_memory) and %s (rules.budget.condition_time) per condition;%s each + copies both "+
		"operands, each matches costs the input times the pattern's program, and a body over a list runs once per item",
		where, byteSize(int64(b.MaxEventBytes)), byteSize(c.Memory), c.Time.Round(time.Millisecond),
		byteSize(b.ConditionMemory), b.ConditionTime, what)
}

// byteSize prints n bytes in the largest binary unit that keeps it >= 1.
func byteSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, units := float64(n), []string{"KiB", "MiB", "GiB", "TiB", "PiB"}
	i := -1
	for f >= unit && i < len(units)-1 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// unknownResult returns the node whose value decides the condition's result
// when that value is not known to be a boolean (a field of the event, an
// item of a list), with its text; nil when every result is a boolean by
// construction.
func unknownResult(n ast.Node) (ast.Node, string) {
	switch x := n.(type) {
	case *ast.BinaryNode:
		if x.Operator == "??" {
			if bad, what := unknownResult(x.Left); bad != nil {
				return bad, what
			}
			return unknownResult(x.Right)
		}
		return nil, ""
	case *ast.ConditionalNode:
		if bad, what := unknownResult(x.Exp1); bad != nil {
			return bad, what
		}
		return unknownResult(x.Exp2)
	case *ast.MemberNode, *ast.IdentifierNode, *ast.ChainNode, *ast.PointerNode, *ast.SliceNode:
		return n, truncate(n.String(), 60)
	case *ast.BuiltinNode:
		switch x.Name {
		case "first", "last", "get", "find", "findLast", "fromJSON", "max", "min", "reduce":
			return n, truncate(n.String(), 60)
		}
	}
	return nil, ""
}

// predicates collects the predicate (closure) nodes of a tree.
type predicates []*ast.PredicateNode

func (ps *predicates) Visit(n *ast.Node) {
	if p, ok := (*n).(*ast.PredicateNode); ok {
		*ps = append(*ps, p)
	}
}

// nestedPredicate returns a predicate that sits inside another one, or nil.
// One predicate over an event array is linear in the event's size, which the
// event size limit bounds; nested ones multiply, so a small event could pin a
// CPU for hours.
func nestedPredicate(root ast.Node) *ast.PredicateNode {
	var all predicates
	ast.Walk(&root, &all)
	for _, p := range all {
		var inner predicates
		ast.Walk(&p.Node, &inner)
		if len(inner) > 0 {
			return inner[0]
		}
	}
	return nil
}

// notBool reports whether n can never produce a boolean.
func notBool(n ast.Node) bool {
	switch x := n.(type) {
	case *ast.BinaryNode:
		switch x.Operator {
		case "+", "-", "*", "/", "%", "**", "^", "..":
			return true
		case "??":
			return notBool(x.Left) || notBool(x.Right)
		}
	case *ast.UnaryNode:
		return x.Operator == "-" || x.Operator == "+"
	case *ast.ConditionalNode:
		return notBool(x.Exp1) || notBool(x.Exp2)
	case *ast.SequenceNode:
		return len(x.Nodes) > 0 && notBool(x.Nodes[len(x.Nodes)-1])
	case *ast.VariableDeclaratorNode:
		return notBool(x.Expr)
	case *ast.IntegerNode, *ast.FloatNode, *ast.StringNode, *ast.ArrayNode, *ast.MapNode, *ast.NilNode, *ast.BytesNode:
		return true
	}
	t := n.Type()
	return t != nil && t.Kind() != reflect.Bool && t.Kind() != reflect.Interface
}

func describe(n ast.Node) string {
	if b, ok := n.(*ast.BinaryNode); ok {
		return fmt.Sprintf("non-boolean %q expression", b.Operator)
	}
	return "non-boolean value"
}

// checkParams applies the executors' security rules: event content may fill
// values, never choose what runs or where a request goes.
func checkParams(taskType string, params *node, probs *[]*FieldError) {
	field := func(name string) *node {
		for i, k := range params.keys {
			if k == name {
				return &params.items[i]
			}
		}
		return nil
	}
	reject := func(path, reason string) {
		*probs = append(*probs, &FieldError{Field: path, Reason: reason})
	}
	if n := field("timeout"); n != nil && n.tpl == nil {
		if n.isMap || n.isArr {
			reject("parameters.timeout", "must be a positive whole number of seconds, got an object or array")
		} else if _, err := timeoutSeconds(n.konst); err != nil {
			reject("parameters.timeout", err.Error())
		}
	}
	switch taskType {
	case "shell":
		for _, name := range []string{"command", "script"} {
			if n := field(name); n != nil && n.hasPlaceholders() {
				reject("parameters."+name, "placeholders are not allowed here: the event must not choose the program (pass values in args)")
			}
		}
		if n := field("args"); n != nil {
			switch {
			case n.isArr:
				for i := range n.items {
					if it := &n.items[i]; it.tpl != nil {
						it.mode = modeArg
					} else if it.hasPlaceholders() {
						reject(fmt.Sprintf("parameters.args[%d]", i), "an argument must be a string, not a list or object")
					}
				}
			case n.hasPlaceholders():
				reject("parameters.args", "must be a list of arguments to use placeholders, so the event cannot add arguments")
			}
		}
	case "http":
		n := field("url")
		if n == nil || !n.hasPlaceholders() {
			return
		}
		if n.tpl == nil {
			reject("parameters.url", "must be a string to use placeholders")
			return
		}
		pre := n.tpl.literalPrefix()
		_, rest, ok := strings.Cut(pre, "://")
		if i := strings.IndexAny(rest, "/?#"); !ok || i <= 0 {
			reject("parameters.url", "placeholders are not allowed in the scheme or host; write them as https://host/path/${...}")
			return
		}
		n.mode = modeURL
		query := false
		for i := range n.tpl.segs {
			sg := &n.tpl.segs[i]
			sg.query = query
			if sg.ph == nil && strings.ContainsAny(sg.lit, "?#") {
				query = true
			}
		}
	}
}

// timeoutSeconds reads parameters.timeout: a positive whole number of
// seconds, as a number or a numeric string.
func timeoutSeconds(v any) (int, error) {
	var f float64
	switch x := v.(type) {
	case string:
		n, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("must be a positive whole number of seconds, got %q", truncate(x, 64))
		}
		f = float64(n)
	case json.Number:
		return timeoutSeconds(x.String())
	default:
		switch rv := reflect.ValueOf(v); rv.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
			f = float64(rv.Int())
		case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			f = float64(rv.Uint())
		case reflect.Float32, reflect.Float64:
			f = rv.Float()
		default:
			return 0, fmt.Errorf("must be a positive whole number of seconds, got %s", typeName(v))
		}
	}
	if f != math.Trunc(f) || f <= 0 || f > maxTimeout {
		return 0, fmt.Errorf("must be a whole number of seconds between 1 and %d, got %v", maxTimeout, v)
	}
	return int(f), nil
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
