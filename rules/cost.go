package rules

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/builtin"
	"github.com/expr-lang/expr/conf"
)

// What a condition may cost.
//
// Conditions come from the rules file, the rules API and the dry-run
// endpoint, which also supplies the event. The expr VM can be neither
// interrupted nor limited in bytes: its memory budget counts list items
// (ranges, list and map literals, map and filter results, sort), counts some
// of them only after building them, and never counts the bytes of strings.
// An allocation the machine cannot serve is Go's fatal "out of memory", not
// a panic, and kills the process. So what lets a value grow faster than the
// condition's source times the event's size is refused at compile time, and
// the budget bounds the list items that remain.
//
// String concatenation stays allowed. Without let, every operand of a + is
// evaluated from its own part of the source, so n + operators join at most
// n+1 operands: the result is linear in the source (checked: no other
// construct left can use a value twice without writing it twice, which is
// why kept predicate bodies are limited and reduce is refused). Linear is
// still a lot with big events: 400 terms of `payload.s +` over a 1 MiB
// string (the 4 KiB limit) measured 76 GB allocated in all, 2 GB at peak and
// 30 s of CPU, as each + copies its left operand again.

// conditionMemoryBudget is the expr VM's memory budget for one evaluation,
// in list items (expr's default is 1e6). It refuses 1..1000000 and anything
// near it, and leaves room for a condition that maps, filters and sorts an
// event array of a few thousand elements a dozen times.
const conditionMemoryBudget = 100_000

// errMemoryBudget is the message of expr's panic when the budget is spent.
const errMemoryBudget = "memory budget exceeded"

// refusedBuiltins are the expr builtins a condition may not call, with why.
// Each can make its result far larger than its input, or costs n² steps;
// none is needed to decide whether one event matches. reduce is a predicate,
// which expr v1.17's DisableBuiltin does not disable, so every name here is
// refused by refusal on the parsed condition, not only by expr.
var refusedBuiltins = map[string]string{
	"repeat":   "its result is its argument times a count, allocated before expr's memory budget is checked",
	"replace":  "every match can become a longer string, so nested calls multiply the size",
	"join":     "the separator is copied between every two items: join(split(s, \"\"), s) is len(s)² bytes",
	"concat":   "it builds one list of all its arguments before expr's memory budget sees its size",
	"flatten":  "it copies a nested list once for every place it appears in",
	"toJSON":   "it indents each line by its depth, so a deeply nested event renders quadratically",
	"toBase64": "its result is 4/3 of its input, so nested calls grow exponentially",
	"uniq":     "it compares every item with every other: n² steps over an event array",
	"reduce":   "the accumulator can double in every step (#acc + #acc); use sum, count, all or any",
}

// allowedBuiltins are the expr v1.17.8 builtins conditions may use; each was
// checked not to grow its input more than by a constant factor, however
// nested. TestBuiltins_are_all_reviewed fails when expr adds one that is in
// neither list.
//
//   - all none any one filter find findIndex findLast findLastIndex count sum:
//     predicates whose result is a boolean, a number or items of their input;
//     each body's result is dropped after every element (nested predicates
//     are refused).
//   - map groupBy sortBy: keep their body's result for every element, so the
//     body is limited (see unkept).
//   - len type abs ceil floor round int float indexOf lastIndexOf hasPrefix
//     hasSuffix max min mean median now duration date timezone bit*: a number,
//     boolean, time or short string (median copies the numbers once).
//   - trim trimPrefix trimSuffix first last get take fromBase64: a part of
//     their input, or smaller.
//   - upper lower: at most 1.5 times their input (3 times for invalid UTF-8),
//     and applying them again does not grow it further (checked for every
//     rune).
//   - string: replaced by stringFunction, which refuses lists and maps: printing
//     split(s, "") doubles s, so nested calls would grow exponentially.
//   - split splitAfter: one string per input byte at most; they can only grow
//     further through join and toJSON, which are refused, or string, which
//     refuses lists.
//   - keys values toPairs fromPairs reverse sort fromJSON: as many items as
//     their input (reverse and sort count against the budget).
var allowedBuiltins = []string{
	"all", "none", "any", "one", "filter", "find", "findIndex", "findLast", "findLastIndex", "count", "sum",
	"map", "groupBy", "sortBy",
	"len", "type", "abs", "ceil", "floor", "round", "int", "float", "indexOf", "lastIndexOf", "hasPrefix",
	"hasSuffix", "max", "min", "mean", "median", "now", "duration", "date", "timezone",
	"bitand", "bitor", "bitxor", "bitnand", "bitshl", "bitshr", "bitushr", "bitnot",
	"trim", "trimPrefix", "trimSuffix", "first", "last", "get", "take", "fromBase64",
	"upper", "lower", "string", "split", "splitAfter",
	"keys", "values", "toPairs", "fromPairs", "reverse", "sort", "fromJSON",
}

// conditionOptions are the expr options every condition compiles with.
var conditionOptions = func() []expr.Option {
	opts := []expr.Option{expr.Env(env{}), expr.AsBool(), func(c *conf.Config) { c.Functions["string"] = stringFunction }}
	for name := range refusedBuiltins {
		opts = append(opts, expr.DisableBuiltin(name))
	}
	return opts
}()

// stringFunction is expr's string() for strings, numbers, booleans, times and
// durations only. Printing a list writes a separator per item, so
// string(split(s, "")) is twice s and nested calls grow exponentially; a
// list or map known at compile time is refused then, one known only at run
// time fails the evaluation.
var stringFunction = &builtin.Function{
	Name: "string",
	Func: func(args ...any) (any, error) {
		if len(args) != 1 {
			return nil, fmt.Errorf("string() takes 1 argument, got %d", len(args))
		}
		if args[0] != nil && !printable(reflect.TypeOf(args[0])) {
			return nil, errStringOfList
		}
		return fmt.Sprintf("%v", args[0]), nil
	},
	Validate: func(args []reflect.Type) (reflect.Type, error) {
		if len(args) != 1 {
			return nil, fmt.Errorf("string() takes 1 argument, got %d", len(args))
		}
		if args[0] != nil && args[0].Kind() != reflect.Interface && !printable(args[0]) {
			return nil, errStringOfList
		}
		return reflect.TypeFor[string](), nil
	},
}

var errStringOfList = errors.New("string() of a list or map is not allowed in conditions: " +
	"printing a list adds a separator per item, so nested calls grow exponentially")

var (
	timeType     = reflect.TypeFor[time.Time]()
	durationType = reflect.TypeFor[time.Duration]()
)

// printable reports whether string() prints t at about its own size.
func printable(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.String, reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return true
	}
	return t == timeType || t == durationType
}

// refusal returns the first construct of a parsed condition (by position)
// that is not allowed, and why; nil when there is none. It looks at the
// tree as written: expr's optimizer moves parts of it (map(filter(...))
// becomes one filter with a map body that ast.Walk does not visit).
func refusal(root ast.Node) (ast.Node, string) {
	if p := nestedPredicate(root); p != nil {
		return p, "a predicate (all, any, filter, map, ...) inside another is not allowed: " +
			"over event arrays it costs len^depth steps and the expr VM cannot be interrupted"
	}
	var r refusals
	ast.Walk(&root, &r)
	if len(r) == 0 {
		return nil, ""
	}
	first := slices.MinFunc(r, func(a, b refused) int { return a.node.Location().From - b.node.Location().From })
	return first.node, first.reason
}

type refused struct {
	node   ast.Node
	reason string
}

// refusals collects every refused construct of a tree.
type refusals []refused

func (r *refusals) Visit(n *ast.Node) {
	refuse := func(n ast.Node, format string, args ...any) {
		*r = append(*r, refused{n, fmt.Sprintf(format, args...)})
	}
	switch x := (*n).(type) {
	case *ast.VariableDeclaratorNode:
		refuse(x, "let is not allowed: a condition is one boolean expression, and a variable used "+
			"twice doubles a value without doubling the condition")
	case *ast.BuiltinNode:
		if why, ok := refusedBuiltins[x.Name]; ok {
			refuse(x, "%s() is not allowed in conditions: %s", x.Name, why)
			return
		}
		if !keepsBody[x.Name] || len(x.Arguments) < 2 {
			return
		}
		if p, ok := x.Arguments[1].(*ast.PredicateNode); ok {
			if bad, what := unkept(p.Node); bad != nil {
				refuse(bad, "%s keeps its body's result for every element, so the body may only pick a part "+
					"of the element (#, .field, #[0]) or compute a number or boolean, not %s", x.Name, what)
			}
		}
	case *ast.CallNode:
		// A method of a time value: Format's output is up to twice its
		// layout ("2" prints the day, "22"), so a layout computed by
		// another Format doubles per call. expr cannot call a method
		// named by an expression, so the name is always a literal.
		m, ok := x.Callee.(*ast.MemberNode)
		if !ok {
			return
		}
		name, ok := m.Property.(*ast.StringNode)
		if ok && (name.Value == "Format" || name.Value == "AppendFormat") &&
			(len(x.Arguments) == 0 || !isString(x.Arguments[len(x.Arguments)-1])) {
			refuse(x, "%s's layout must be a string literal: a computed layout can double in every nested call", name.Value)
		}
	}
}

// keepsBody names the predicates that keep their body's result for every
// element (map's result, groupBy's keys, sortBy's keys while it sorts). Over
// a range or an event array of n elements, a body that builds a string or
// list, or returns a value from outside the element, keeps n copies:
// map(1..10000, payload.s + "x") is 10 GB for a 1 MiB string, and chained
// maps of # + # double per map.
var keepsBody = map[string]bool{"map": true, "groupBy": true, "sortBy": true}

// unkept returns the part of a kept body's result that could be large, and
// a description of it; nil when the result is a constant, a number, a
// boolean or a part of the element, or one of those through a function that
// keeps its size.
func unkept(n ast.Node) (ast.Node, string) {
	switch x := n.(type) {
	case *ast.NilNode, *ast.BoolNode, *ast.IntegerNode, *ast.FloatNode, *ast.StringNode, *ast.BytesNode,
		*ast.ConstantNode, *ast.UnaryNode:
		return nil, ""
	case *ast.BinaryNode:
		switch x.Operator {
		case "+":
			if isNumber(x.Left) || isNumber(x.Right) {
				return nil, ""
			}
			return x, fmt.Sprintf("%s (+ also joins strings)", truncate(x.String(), 60))
		case "??":
			if bad, what := unkept(x.Left); bad != nil {
				return bad, what
			}
			return unkept(x.Right)
		}
		// Comparisons, logic, in and matches are booleans; - * / % ** are
		// numbers; a range counts against the memory budget.
		return nil, ""
	case *ast.ConditionalNode:
		if bad, what := unkept(x.Exp1); bad != nil {
			return bad, what
		}
		return unkept(x.Exp2)
	case *ast.BuiltinNode:
		switch {
		case scalarBuiltins[x.Name]:
			return nil, ""
		case sameSizeBuiltins[x.Name] && len(x.Arguments) > 0:
			return unkept(x.Arguments[0])
		}
	}
	base := outsideElement(n)
	if base == nil {
		return nil, ""
	}
	what := truncate(n.String(), 60)
	switch base.(type) {
	case *ast.IdentifierNode:
		what += " (a value from outside the element)"
	case *ast.ArrayNode, *ast.MapNode:
		what += " (a new list or map)"
	}
	return n, what
}

// outsideElement returns nil when n is the predicate's element or a part
// of it, else the node n is taken from.
func outsideElement(n ast.Node) ast.Node {
	switch x := n.(type) {
	case *ast.PointerNode:
		return nil
	case *ast.MemberNode:
		return outsideElement(x.Node)
	case *ast.ChainNode:
		return outsideElement(x.Node)
	case *ast.SliceNode:
		return outsideElement(x.Node)
	case *ast.BuiltinNode:
		if partBuiltins[x.Name] && len(x.Arguments) > 0 {
			return outsideElement(x.Arguments[0])
		}
	}
	return n
}

var (
	// scalarBuiltins return a number, a boolean, a duration or a short
	// string. date and timezone are not here: each call may load a time
	// zone, which a kept body would keep per element.
	scalarBuiltins = setOf("len", "type", "abs", "ceil", "floor", "round", "int", "float", "indexOf",
		"lastIndexOf", "hasPrefix", "hasSuffix", "max", "min", "mean", "median", "now", "duration",
		"bitand", "bitor", "bitxor", "bitnand", "bitshl", "bitshr", "bitushr", "bitnot")
	// sameSizeBuiltins return about the size of their first argument.
	sameSizeBuiltins = setOf("string", "upper", "lower", "trim", "trimPrefix", "trimSuffix", "fromBase64")
	// partBuiltins return a part of their first argument.
	partBuiltins = setOf("first", "last", "get", "take")
)

func setOf(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

func isNumber(n ast.Node) bool {
	if u, ok := n.(*ast.UnaryNode); ok && (u.Operator == "-" || u.Operator == "+") {
		n = u.Node
	}
	switch n.(type) {
	case *ast.IntegerNode, *ast.FloatNode:
		return true
	}
	return false
}

func isString(n ast.Node) bool {
	_, ok := n.(*ast.StringNode)
	return ok
}
