package rules

import (
	"fmt"
	"math"
	"regexp/syntax"
	"time"

	"github.com/expr-lang/expr/ast"
)

// The cost model.
//
// A condition is estimated on its parsed tree, before it runs, for an event
// of a given size E: every value read from the event (payload, metadata,
// eventType, ...) may be E bytes and hold E/2 items. Each node adds the
// bytes it allocates and the time it takes; the bound is worst-case, not
// typical: an estimate of 1 s is a condition that can take 1 s, not one
// that does on most events.
//
// Inside a predicate (all, map, filter, ...) sizes are linear functions
// a·x + b of the element's size x, so a body that touches only its element
// sums to a·(size of the list) + b·(its items) rather than items × list:
// any(payload.items, upper(.name) == "X") is linear in the event, while
// all(payload.items, indexOf(payload.s, .k) >= 0) is quadratic, and is
// estimated so. Nested predicates are refused (cost.go), so one level is
// all there is.
//
// Per-byte costs were measured on the project's shared 2-core machine
// (Go 1.26) and rounded up:
//   - copying or allocating a string: 2 ns per byte (1 MiB + 1 MiB chains
//     of 50 terms: 2.07 ns/B with GC);
//   - scanning (comparisons, contains, indexOf, parsing): 1 ns per byte;
//   - a regular expression: 8 ns per instruction of its program per input
//     byte (`(x|xx){500}y`, 3003 instructions, 1 MiB: 6.9 ns; 303: 7.7 ns);
//   - a VM step (a node per element): 20 ns.
const (
	copyNSPerByte    = 2
	scanNSPerByte    = 1
	regexpNSPerInstB = 8
	stepNS           = 20
	// itemBytes is the size of a list item or string header in memory.
	itemBytes = 16
	// decodeGrowth bounds the memory of fromJSON per input byte: "[1,1,…]"
	// makes a 16-byte interface and an 8-byte float per 2 bytes.
	decodeGrowth = 32
)

// lin is a·x + b, x being the size of the current predicate's element.
type lin struct{ a, b float64 }

func (l lin) plus(o lin) lin           { return lin{l.a + o.a, l.b + o.b} }
func (l lin) times(k float64) lin      { return lin{l.a * k, l.b * k} }
func (l lin) maxWith(o lin) lin        { return lin{math.Max(l.a, o.a), math.Max(l.b, o.b)} }
func constant(b float64) lin           { return lin{0, b} }
func (l lin) over(size, n lin) float64 { return l.a*size.b + l.b*n.b }

// minLin bounds min(l, o): the element's side when only one side is an
// element (the sum over elements of min(x, E) is at most the list's size).
func minLin(l, o lin) lin {
	switch {
	case l.a == 0 && o.a == 0:
		return constant(math.Min(l.b, o.b))
	case o.a == 0:
		return l
	case l.a == 0:
		return o
	}
	return l
}

// val bounds a value: its size in bytes and its item count.
type val struct{ size, n lin }

var scalar = val{size: constant(8), n: constant(1)}

// estimator walks a condition for one event size.
type estimator struct {
	e         float64 // event size
	maxRegexp int
	mem, work lin
	// top is the node that added the most, for the reason of a refusal.
	top     ast.Node
	topCost float64
	refused ast.Node
	reason  string
}

// estimate returns the cost of the condition tree for an event of
// eventBytes, or the first node refused (a pattern from the event, or too
// big a program) with why.
func estimate(root ast.Node, eventBytes, maxRegexp int) (Cost, ast.Node, string, ast.Node) {
	es := &estimator{e: float64(eventBytes), maxRegexp: maxRegexp}
	es.node(root)
	if es.refused != nil {
		return Cost{}, es.refused, es.reason, nil
	}
	return Cost{Memory: clampInt(es.mem.b), Time: time.Duration(clampInt(es.work.b))}, nil, "", es.top
}

func clampInt(f float64) int64 {
	if f >= math.MaxInt64/2 {
		return math.MaxInt64 / 2
	}
	return int64(math.Ceil(f))
}

func (es *estimator) refuse(n ast.Node, format string, args ...any) {
	if es.refused == nil {
		es.refused, es.reason = n, fmt.Sprintf(format, args...)
	}
}

// charge adds mem bytes and work ns for node n.
func (es *estimator) charge(n ast.Node, mem, work lin) {
	es.mem = es.mem.plus(mem)
	es.work = es.work.plus(work)
	// Outside a predicate a is 0; inside, the element is at most the event.
	if c := work.a*es.e + work.b + (mem.a*es.e+mem.b)*copyNSPerByte; c > es.topCost {
		es.top, es.topCost = n, c
	}
}

func (es *estimator) event() val { return val{size: constant(es.e), n: constant(es.e / 2)} }

func (es *estimator) node(n ast.Node) val {
	es.work = es.work.plus(constant(stepNS))
	switch x := n.(type) {
	case nil:
		return scalar
	case *ast.NilNode, *ast.BoolNode, *ast.IntegerNode, *ast.FloatNode:
		return scalar
	case *ast.StringNode:
		return val{size: constant(float64(len(x.Value))), n: constant(float64(len(x.Value)))}
	case *ast.BytesNode:
		return val{size: constant(float64(len(x.Value))), n: constant(float64(len(x.Value)))}
	case *ast.ConstantNode:
		return val{size: constant(es.e), n: constant(es.e / 2)}
	case *ast.IdentifierNode:
		return es.event()
	case *ast.PointerNode:
		if x.Name == "" {
			return val{size: lin{1, 0}, n: lin{1, 0}}
		}
		return scalar
	case *ast.MemberNode:
		v := es.node(x.Node)
		es.node(x.Property)
		return v
	case *ast.ChainNode:
		return es.node(x.Node)
	case *ast.SliceNode:
		v := es.node(x.Node)
		es.node(x.From)
		es.node(x.To)
		return v
	case *ast.UnaryNode:
		es.node(x.Node)
		return scalar
	case *ast.BinaryNode:
		return es.binary(x)
	case *ast.ConditionalNode:
		es.node(x.Cond)
		a, b := es.node(x.Exp1), es.node(x.Exp2)
		return val{size: a.size.maxWith(b.size), n: a.n.maxWith(b.n)}
	case *ast.ArrayNode:
		out := val{}
		for _, it := range x.Nodes {
			v := es.node(it)
			out.size = out.size.plus(v.size).plus(constant(itemBytes))
		}
		out.n = constant(float64(len(x.Nodes)))
		es.charge(x, out.size, constant(0))
		return out
	case *ast.MapNode:
		out := val{}
		for _, p := range x.Pairs {
			v := es.node(p)
			out.size = out.size.plus(v.size).plus(constant(4 * itemBytes))
		}
		out.n = constant(float64(len(x.Pairs)))
		es.charge(x, out.size, constant(0))
		return out
	case *ast.PairNode:
		k, v := es.node(x.Key), es.node(x.Value)
		return val{size: k.size.plus(v.size), n: constant(1)}
	case *ast.SequenceNode:
		v := scalar
		for _, s := range x.Nodes {
			v = es.node(s)
		}
		return v
	case *ast.CallNode:
		return es.call(x)
	case *ast.BuiltinNode:
		return es.builtin(x)
	case *ast.PredicateNode:
		return es.node(x.Node)
	}
	// Anything else (let is refused before) is bounded by its children:
	// charged as a copy of all of them.
	return es.event()
}

func (es *estimator) binary(x *ast.BinaryNode) val {
	l := es.node(x.Left)
	if x.Operator == "matches" {
		es.matches(x, l)
		return scalar
	}
	r := es.node(x.Right)
	switch x.Operator {
	case "+":
		// Joins strings or lists: a new value of both sizes. Numbers are
		// charged as strings too, since types are unknown here.
		size := l.size.plus(r.size)
		es.charge(x, size, size.times(copyNSPerByte))
		return val{size: size, n: l.n.plus(r.n)}
	case "==", "!=", "<", ">", "<=", ">=", "startsWith", "endsWith":
		es.charge(x, constant(0), minLin(l.size, r.size).times(scanNSPerByte))
	case "contains", "in", "not in":
		es.charge(x, constant(0), l.size.plus(r.size).times(scanNSPerByte))
	case "..":
		n := constant(conditionMemoryBudget)
		if lo, ok := x.Left.(*ast.IntegerNode); ok {
			if hi, ok := x.Right.(*ast.IntegerNode); ok {
				n = constant(math.Min(math.Max(float64(hi.Value-lo.Value+1), 0), conditionMemoryBudget))
			}
		}
		es.charge(x, n.times(8), n.times(stepNS))
		return val{size: n.times(8), n: n}
	case "??":
		return val{size: l.size.maxWith(r.size), n: l.n.maxWith(r.n)}
	}
	return scalar
}

// matches checks a `matches` pattern and charges its run: the program size
// times the input. A pattern computed per event is refused: compiling it is
// the cost of its size, squared in the worst case, and it cannot be checked
// at load.
func (es *estimator) matches(x *ast.BinaryNode, subject val) {
	lit, ok := x.Right.(*ast.StringNode)
	if !ok {
		es.refuse(x.Right, "the pattern of matches must be a string literal, compiled once at load: "+
			"a pattern taken from the event costs the square of its size to run and cannot be checked")
		return
	}
	insts, err := regexpProgramSize(lit.Value)
	if err != nil {
		es.refuse(x.Right, "invalid regular expression: %v", err)
		return
	}
	if insts > es.maxRegexp {
		es.refuse(x.Right, "the regular expression compiles to %d instructions, more than %d (rules.budget.max_regexp_program): "+
			"matching costs the input size times the program size; counted repetitions like {500} multiply it", insts, es.maxRegexp)
		return
	}
	// Go's regexp runs a backtracker for inputs of up to 256 Ki
	// instruction×byte states: its visited bits and job stack took 11.4
	// bytes per state on a first run (measured: 288 KB for 7 instructions
	// × 3.6 KB); larger inputs run the NFA, whose memory is the program's.
	mem := subject.size.plus(constant(1)).times(float64(insts) * backtrackBytesPerState)
	if mem.a == 0 {
		mem.b = math.Min(mem.b, maxBacktrackStates*backtrackBytesPerState)
	}
	es.charge(x, mem.plus(constant(float64(insts)*64)), subject.size.times(float64(insts)*regexpNSPerInstB))
}

const (
	backtrackBytesPerState = 12
	maxBacktrackStates     = 256 << 10
)

// regexpProgramSize is the instruction count of pattern's RE2 program, as
// regexp.Compile builds it.
func regexpProgramSize(pattern string) (int, error) {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return 0, err
	}
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		return 0, err
	}
	return len(prog.Inst), nil
}

// call is a method of a time value (Format) or a function of the env.
func (es *estimator) call(x *ast.CallNode) val {
	es.node(x.Callee)
	size := constant(64)
	for _, a := range x.Arguments {
		v := es.node(a)
		// Format's output is at most twice its layout.
		size = size.plus(v.size.times(2))
	}
	es.charge(x, size, size.times(copyNSPerByte))
	return val{size: size, n: size}
}

func (es *estimator) builtin(x *ast.BuiltinNode) val {
	if _, ok := predicateBuiltins[x.Name]; ok {
		return es.predicate(x)
	}
	args := make([]val, len(x.Arguments))
	all := val{}
	for i, a := range x.Arguments {
		args[i] = es.node(a)
		all.size, all.n = all.size.plus(args[i].size), all.n.plus(args[i].n)
	}
	first := scalar
	if len(args) > 0 {
		first = args[0]
	}
	scan := all.size.times(scanNSPerByte)
	switch x.Name {
	case "len", "abs", "ceil", "floor", "round", "now", "duration", "bitand", "bitor", "bitxor",
		"bitnand", "bitshl", "bitshr", "bitushr", "bitnot", "type":
		return scalar
	case "int", "float", "indexOf", "lastIndexOf", "hasPrefix", "hasSuffix", "max", "min", "mean":
		es.charge(x, constant(0), scan)
		return scalar
	case "median":
		es.charge(x, first.n.times(8), first.n.times(stepNS*math.Log2(es.e+2)))
		return scalar
	case "date":
		es.charge(x, constant(256), scan)
		return val{size: constant(64), n: constant(1)}
	case "timezone":
		// Loading a zone reads the zone database.
		es.charge(x, constant(64<<10), scan.plus(constant(float64(100*time.Microsecond))))
		return val{size: constant(64), n: constant(1)}
	case "trim", "trimPrefix", "trimSuffix", "first", "last", "get", "take":
		es.charge(x, constant(0), scan)
		return first
	case "fromBase64":
		size := first.size.times(0.75)
		es.charge(x, size, first.size.times(copyNSPerByte))
		return val{size: size, n: size}
	case "upper", "lower":
		// At most 3 times (invalid UTF-8 becomes U+FFFD), see cost.go.
		size := first.size.times(3)
		es.charge(x, size, size.times(copyNSPerByte))
		return val{size: size, n: size}
	case "string":
		size := first.size.plus(constant(32))
		es.charge(x, size, size.times(copyNSPerByte))
		return val{size: size, n: size}
	case "split", "splitAfter":
		n := first.size.plus(constant(1))
		mem := n.times(itemBytes)
		es.charge(x, mem, mem.plus(first.size).times(copyNSPerByte))
		return val{size: first.size.plus(mem), n: n}
	case "keys", "values", "reverse":
		mem := first.n.times(itemBytes)
		es.charge(x, mem, mem.times(copyNSPerByte))
		return val{size: first.size.plus(mem), n: first.n}
	case "toPairs", "fromPairs":
		mem := first.n.times(4 * itemBytes)
		es.charge(x, mem, mem.times(copyNSPerByte))
		return val{size: first.size.plus(mem), n: first.n}
	case "sort":
		mem := first.n.times(itemBytes)
		es.charge(x, mem, first.n.times(stepNS*math.Log2(es.e+2)).plus(first.size.times(scanNSPerByte)))
		return val{size: first.size.plus(mem), n: first.n}
	case "fromJSON":
		mem := first.size.times(decodeGrowth)
		es.charge(x, mem, first.size.times(stepNS))
		return val{size: mem, n: first.size.times(0.5)}
	}
	// A builtin not listed is charged as a copy of its arguments.
	es.charge(x, all.size, all.size.times(copyNSPerByte))
	return all
}

// predicateBuiltins are the builtins with a predicate body, and whether
// their result is a list (kept items), an item, or a scalar.
var predicateBuiltins = map[string]string{
	"all": "scalar", "none": "scalar", "any": "scalar", "one": "scalar", "count": "scalar", "sum": "scalar",
	"findIndex": "scalar", "findLastIndex": "scalar",
	"find": "item", "findLast": "item",
	"filter": "list", "map": "map", "groupBy": "group", "sortBy": "sort",
	"reduce": "item",
}

// predicate charges a builtin over a list: the body once per item, as a
// function of the item's size summed over the list.
func (es *estimator) predicate(x *ast.BuiltinNode) val {
	if len(x.Arguments) == 0 {
		return scalar
	}
	list := es.node(x.Arguments[0])
	// Outside a predicate a list's size has no element part; nested
	// predicates are refused before.
	size, n := constant(list.size.b+list.size.a*es.e), constant(list.n.b+list.n.a*es.e)
	outerMem, outerWork := es.mem, es.work
	es.mem, es.work = lin{}, lin{}
	body := scalar
	for _, a := range x.Arguments[1:] {
		body = es.node(a)
	}
	bodyMem, bodyWork := es.mem, es.work
	es.mem, es.work = outerMem, outerWork
	mem := constant(bodyMem.over(size, n))
	work := constant(bodyWork.over(size, n)).plus(n.times(stepNS))
	kept := constant(body.size.over(size, n))
	switch predicateBuiltins[x.Name] {
	case "item":
		es.charge(x, mem, work)
		return list
	case "list":
		mem = mem.plus(n.times(itemBytes))
		es.charge(x, mem, work)
		return val{size: size, n: n}
	case "map":
		mem = mem.plus(n.times(itemBytes)).plus(kept)
		es.charge(x, mem, work)
		return val{size: kept.plus(n.times(itemBytes)), n: n}
	case "group":
		mem = mem.plus(n.times(4 * itemBytes)).plus(kept)
		es.charge(x, mem, work)
		return val{size: size.plus(kept), n: n}
	case "sort":
		mem = mem.plus(n.times(2 * itemBytes)).plus(kept)
		work = work.plus(n.times(stepNS * math.Log2(es.e+2)))
		es.charge(x, mem, work)
		return val{size: size, n: n}
	}
	es.charge(x, mem, work)
	return scalar
}
