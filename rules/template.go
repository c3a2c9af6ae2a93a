package rules

import (
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
)

// root is what a placeholder's first word refers to.
type root uint8

const (
	rootEventID root = iota
	rootEventType
	rootTimestamp
	rootSource
	rootPriority
	rootPayload
	rootMetadata
)

var roots = map[string]root{
	"eventId":   rootEventID,
	"eventType": rootEventType,
	"timestamp": rootTimestamp,
	"source":    rootSource,
	"priority":  rootPriority,
	"payload":   rootPayload,
	"metadata":  rootMetadata,
}

// placeholder is one `${root.a.b:-default}`.
type placeholder struct {
	raw    string // as written, for error messages
	root   root
	path   []string
	def    string
	hasDef bool
}

// segment is literal text or a placeholder.
type segment struct {
	lit string
	ph  *placeholder
	// query is set for url placeholders after '?' or '#', which are escaped
	// as query values instead of path segments.
	query bool
}

// template is a string parsed once at compile time.
type template struct {
	src  string // as written
	segs []segment
	// lone: the string is exactly one placeholder, so it renders to the
	// value itself with its JSON type.
	lone bool
}

// hasPlaceholders reports whether rendering depends on the event.
func (t *template) hasPlaceholders() bool {
	for _, s := range t.segs {
		if s.ph != nil {
			return true
		}
	}
	return false
}

// literalPrefix is the text before the first placeholder.
func (t *template) literalPrefix() string {
	var b strings.Builder
	for _, s := range t.segs {
		if s.ph != nil {
			break
		}
		b.WriteString(s.lit)
	}
	return b.String()
}

// parseTemplate splits s into literal text and placeholders. `$${` writes a
// literal `${`; a `$` not followed by `{` is literal.
func parseTemplate(s string) (*template, error) {
	t := &template{src: s}
	var lit strings.Builder
	for i := 0; i < len(s); {
		switch {
		case strings.HasPrefix(s[i:], "$${"):
			lit.WriteString("${")
			i += 3
		case strings.HasPrefix(s[i:], "${"):
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				return nil, fmt.Errorf("unterminated placeholder at byte %d (a literal ${ is written $${)", i)
			}
			raw := s[i : i+2+end+1]
			ph, err := parsePlaceholder(raw, s[i+2:i+2+end])
			if err != nil {
				return nil, err
			}
			if lit.Len() > 0 {
				t.segs = append(t.segs, segment{lit: lit.String()})
				lit.Reset()
			}
			t.segs = append(t.segs, segment{ph: ph})
			i += len(raw)
		default:
			lit.WriteByte(s[i])
			i++
		}
	}
	if lit.Len() > 0 || len(t.segs) == 0 {
		t.segs = append(t.segs, segment{lit: lit.String()})
	}
	t.lone = len(t.segs) == 1 && t.segs[0].ph != nil
	return t, nil
}

func parsePlaceholder(raw, body string) (*placeholder, error) {
	ph := &placeholder{raw: raw}
	if ref, def, ok := strings.Cut(body, ":-"); ok {
		body, ph.def, ph.hasDef = ref, def, true
		if strings.Contains(def, "${") {
			return nil, fmt.Errorf("%s: a default cannot hold a placeholder", raw)
		}
	}
	words := strings.Split(body, ".")
	r, ok := roots[words[0]]
	if !ok {
		return nil, fmt.Errorf("%s: unknown placeholder %q (use eventId, eventType, timestamp, source, priority, payload.<path> or metadata.<path>)", raw, words[0])
	}
	ph.root = r
	ph.path = words[1:]
	if len(ph.path) > 0 && r != rootPayload && r != rootMetadata {
		return nil, fmt.Errorf("%s: %s has no fields", raw, words[0])
	}
	for _, w := range ph.path {
		if w == "" || strings.ContainsAny(w, " \t\r\n") {
			return nil, fmt.Errorf("%s: bad path %q (words separated by single dots, no spaces)", raw, body)
		}
	}
	return ph, nil
}

// value returns what ph refers to in e. ok is false when it is missing: an
// absent key, a null, a path through a non-object, or an empty envelope field.
func (ph *placeholder) value(e *env) (v any, ok bool) {
	switch ph.root {
	case rootPayload:
		return walk(e.Payload, ph.path)
	case rootMetadata:
		return walk(e.Metadata, ph.path)
	}
	s := ph.envelope(e)
	return s, s != ""
}

// envelope returns an envelope field as a string, without boxing it.
func (ph *placeholder) envelope(e *env) string {
	switch ph.root {
	case rootEventID:
		return e.MessageID
	case rootEventType:
		return e.EventType
	case rootTimestamp:
		return e.Timestamp
	case rootSource:
		return e.Source
	case rootPriority:
		return e.Priority
	}
	return ""
}

// text resolves ph as text, as inside a larger string.
func (ph *placeholder) text(e *env) (string, error) {
	if ph.root != rootPayload && ph.root != rootMetadata {
		if s := ph.envelope(e); s != "" {
			return s, nil
		}
	}
	v, err := ph.resolve(e)
	if err != nil {
		return "", err
	}
	return format(v), nil
}

func walk(m map[string]any, path []string) (any, bool) {
	if m == nil {
		return nil, false
	}
	var cur any = m
	for _, w := range path {
		switch c := cur.(type) {
		case map[string]any:
			cur = c[w]
		case []any:
			i, err := strconv.Atoi(w)
			if err != nil || i < 0 || i >= len(c) {
				return nil, false
			}
			cur = c[i]
		default:
			return nil, false
		}
	}
	return cur, cur != nil
}

// resolve returns the placeholder's value or its default.
func (ph *placeholder) resolve(e *env) (any, error) {
	if v, ok := ph.value(e); ok {
		return v, nil
	}
	if ph.hasDef {
		return ph.def, nil
	}
	return nil, fmt.Errorf("%s: missing value (no default; write %s to give one)",
		ph.raw, strings.TrimSuffix(ph.raw, "}")+":-default}")
}

// mode says how substituted values must be treated where a template sits.
type mode uint8

const (
	modePlain mode = iota
	// modeURL escapes values as path segments or query values.
	modeURL
	// modeArg refuses values that would turn a shell argument into a flag.
	modeArg
)

// render renders t. A lone placeholder keeps the value's type; otherwise
// the result is a string.
func (t *template) render(e *env, m mode) (any, error) {
	if t.lone && m != modeURL {
		v, err := t.segs[0].ph.resolve(e)
		if err != nil {
			return nil, err
		}
		if m == modeArg {
			return v, checkArg(t, v)
		}
		return v, nil
	}
	s, err := t.renderString(e, m)
	if err != nil {
		return nil, err
	}
	if m == modeArg {
		return s, checkArg(t, s)
	}
	return s, nil
}

// renderString renders t as a string whatever the values' types. It
// allocates at most the result (plus number formatting).
func (t *template) renderString(e *env, m mode) (string, error) {
	if len(t.segs) == 1 && t.segs[0].ph == nil {
		return t.segs[0].lit, nil
	}
	var buf [8]string
	parts := buf[:0]
	size := 0
	for _, s := range t.segs {
		str := s.lit
		if s.ph != nil {
			v, err := s.ph.text(e)
			if err != nil {
				return "", err
			}
			if str, err = escape(s, v, m); err != nil {
				return "", err
			}
		}
		parts = append(parts, str)
		size += len(str)
	}
	if len(parts) == 1 {
		return parts[0], nil
	}
	var b strings.Builder
	b.Grow(size)
	for _, p := range parts {
		b.WriteString(p)
	}
	return b.String(), nil
}

// escape makes a value safe where its placeholder sits in a url.
func escape(s segment, str string, m mode) (string, error) {
	if m != modeURL {
		return str, nil
	}
	if s.query {
		return url.QueryEscape(str), nil
	}
	if str == "." || str == ".." {
		return "", fmt.Errorf("%s: value %q would change the url path", s.ph.raw, str)
	}
	return url.PathEscape(str), nil
}

// checkArg refuses a shell argument that starts with '-' because of a
// substituted value: the event would choose the command's flags.
func checkArg(t *template, v any) error {
	switch v.(type) {
	case map[string]any, []any:
		return fmt.Errorf("%s: an argument must be a string, number or bool, got %s", t.segs[0].ph.raw, typeName(v))
	}
	if !strings.HasPrefix(format(v), "-") || strings.HasPrefix(t.segs[0].lit, "-") {
		return nil
	}
	return fmt.Errorf("value %q starts with '-' and would become a flag", truncate(format(v), 64))
}

// format writes a value inside a larger string: numbers without exponent
// where integral, objects and arrays as JSON.
func format(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return formatFloat(x, 64)
	case float32:
		return formatFloat(float64(x), 32)
	case int:
		return strconv.Itoa(x)
	case int64:
		return strconv.FormatInt(x, 10)
	case uint64:
		return strconv.FormatUint(x, 10)
	case bool:
		return strconv.FormatBool(x)
	case json.Number:
		return x.String()
	case nil:
		return ""
	}
	if b, err := json.Marshal(v); err == nil {
		return string(b)
	}
	return fmt.Sprint(v)
}

func formatFloat(f float64, bits int) string {
	if f == math.Trunc(f) && math.Abs(f) < 1e21 {
		return strconv.FormatFloat(f, 'f', -1, bits)
	}
	return strconv.FormatFloat(f, 'g', -1, bits)
}

func typeName(v any) string {
	switch v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	}
	return fmt.Sprintf("%T", v)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// node is a parameter value compiled once: a constant, a string template,
// or an object/array of nodes. It keeps what Rules needs to give the
// parameters back, so a Set stores them once.
type node struct {
	konst any
	tpl   *template
	keys  []string // object keys, parallel to items
	items []node   // object fields or array items
	isMap bool
	isArr bool
	mode  mode
}

// render builds a fresh value for one task, so tasks never share maps. A
// *FieldError's Field is the path below n, filled in on the way up.
func (n *node) render(e *env) (any, error) {
	switch {
	case n.tpl != nil:
		v, err := n.tpl.render(e, n.mode)
		if err != nil {
			return nil, &FieldError{Reason: err.Error()}
		}
		return v, nil
	case n.isMap:
		m := make(map[string]any, len(n.keys))
		for i, k := range n.keys {
			v, err := n.items[i].render(e)
			if err != nil {
				return nil, under(err, "."+k)
			}
			m[k] = v
		}
		return m, nil
	case n.isArr:
		a := make([]any, len(n.items))
		for i := range n.items {
			v, err := n.items[i].render(e)
			if err != nil {
				return nil, under(err, "["+strconv.Itoa(i)+"]")
			}
			a[i] = v
		}
		return a, nil
	}
	return n.konst, nil
}

// under prefixes a render error's path with step, on the error path only,
// so nodes need not store their paths.
func under(err error, step string) error {
	if fe, ok := err.(*FieldError); ok {
		fe.Field = step + fe.Field
	}
	return err
}

// source rebuilds the value n was compiled from.
func (n *node) source() any {
	switch {
	case n.tpl != nil:
		return n.tpl.src
	case n.isMap:
		m := make(map[string]any, len(n.keys))
		for i, k := range n.keys {
			m[k] = n.items[i].source()
		}
		return m
	case n.isArr:
		a := make([]any, len(n.items))
		for i := range n.items {
			a[i] = n.items[i].source()
		}
		return a
	}
	return n.konst
}

// hasPlaceholders reports whether any template under n has a placeholder.
func (n *node) hasPlaceholders() bool {
	if n.tpl != nil {
		return n.tpl.hasPlaceholders()
	}
	for i := range n.items {
		if n.items[i].hasPlaceholders() {
			return true
		}
	}
	return false
}

// compileValue compiles a parameter value at path, adding every problem to
// probs. depth bounds recursion on hostile input from the API.
func compileValue(v any, path string, depth int, probs *[]*FieldError) node {
	var n node
	if depth > maxDepth {
		*probs = append(*probs, &FieldError{Field: path, Reason: fmt.Sprintf("nested deeper than %d levels", maxDepth)})
		return n
	}
	switch x := v.(type) {
	case string:
		t, err := parseTemplate(x)
		switch {
		case err != nil:
			*probs = append(*probs, &FieldError{Field: path, Reason: err.Error()})
		case !t.hasPlaceholders() && t.segs[0].lit == x:
			n.konst = x // boxed once here, not per task
		default:
			n.tpl = t
		}
	case map[string]any:
		n.isMap = true
		n.keys = make([]string, 0, len(x))
		n.items = make([]node, 0, len(x))
		for k, item := range x {
			n.keys = append(n.keys, k)
			n.items = append(n.items, compileValue(item, path+"."+k, depth+1, probs))
		}
	case []any:
		n.isArr = true
		n.items = make([]node, 0, len(x))
		for i, item := range x {
			n.items = append(n.items, compileValue(item, path+"["+strconv.Itoa(i)+"]", depth+1, probs))
		}
	case nil, bool, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, float32, float64, json.Number:
		n.konst = x
	default:
		*probs = append(*probs, &FieldError{Field: path, Reason: fmt.Sprintf(
			"unsupported value of type %T (use strings, numbers, booleans, null, lists and objects with string keys)", v)})
	}
	return n
}

// maxDepth bounds how deeply parameters may nest.
const maxDepth = 32
