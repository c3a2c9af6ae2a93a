package executor

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/task"
)

// paramError is the permanent error for a bad task parameter: the same task
// fails the same way on every attempt.
func paramError(name, format string, args ...any) error {
	return permanent.Wrap(fmt.Errorf("parameters.%s: "+format, append([]any{name}, args...)...))
}

// stringParam returns parameters[name] as a string; ok is false when absent or null.
func stringParam(t *task.Task, name string) (s string, ok bool, err error) {
	v, present := t.Parameters[name]
	if !present || v == nil {
		return "", false, nil
	}
	s, isString := v.(string)
	if !isString {
		return "", false, paramError(name, "want a string, got %s", typeName(v))
	}
	return s, true, nil
}

// taskTimeout is the execution timeout of t: t.Timeout when set, else
// parameters.timeout (seconds, for tasks built without the rules engine),
// else def.
func taskTimeout(t *task.Task, def time.Duration) (time.Duration, error) {
	if t.Timeout > 0 {
		return t.TimeoutDuration(def), nil
	}
	v, present := t.Parameters["timeout"]
	if !present || v == nil {
		return def, nil
	}
	secs, ok := number(v)
	// The upper bound keeps the conversion to a Duration from overflowing.
	if !ok || !(secs > 0) || secs > math.MaxInt64/float64(time.Second) {
		return 0, paramError("timeout", "want a positive number of seconds, got %s", describe(v))
	}
	return time.Duration(secs * float64(time.Second)), nil
}

// number converts the numeric types JSON decoding and Go callers produce.
func number(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case float32:
		return float64(n), true
	case int:
		return float64(n), true
	case int32:
		return float64(n), true
	case int64:
		return float64(n), true
	case uint:
		return float64(n), true
	case uint32:
		return float64(n), true
	case uint64:
		return float64(n), true
	case json.Number:
		f, err := n.Float64()
		return f, err == nil
	}
	return 0, false
}

// formatScalar formats a string, number or bool as text; ok is false for
// anything else. Integral floats print without a fraction: 1000, not 1e+03.
func formatScalar(v any) (s string, ok bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case bool:
		return strconv.FormatBool(x), true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case float32:
		return strconv.FormatFloat(float64(x), 'f', -1, 32), true
	case int:
		return strconv.Itoa(x), true
	case int32:
		return strconv.FormatInt(int64(x), 10), true
	case int64:
		return strconv.FormatInt(x, 10), true
	case uint:
		return strconv.FormatUint(uint64(x), 10), true
	case uint32:
		return strconv.FormatUint(uint64(x), 10), true
	case uint64:
		return strconv.FormatUint(x, 10), true
	case json.Number:
		return x.String(), true
	}
	return "", false
}

// typeName names v's JSON type for error messages.
func typeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "string"
	case bool:
		return "bool"
	case map[string]any:
		return "object"
	case []any:
		return "array"
	}
	if _, ok := number(v); ok {
		return "number"
	}
	return fmt.Sprintf("%T", v)
}

// describe shows a bad value in an error: its type and a short rendering.
func describe(v any) string {
	s := fmt.Sprintf("%v", v)
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return fmt.Sprintf("%s %q", typeName(v), s)
}
