package event

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/eventpipe/eventpipe/permanent"
)

// FieldError is one problem with an event. Parse and Split return every
// problem they find as a *FieldError, joined with errors.Join when there are
// several, and marked with permanent.Wrap: a malformed event fails the same
// way on every delivery, so it must go to the poison topic, not be retried.
type FieldError struct {
	// Field is the key as the producer wrote it ("payload", CloudEvents
	// "data"), "[i]" for the i-th element of a batch, or "" for the event as
	// a whole (size, encoding, syntax).
	Field string
	// Value is the offending value, compact and truncated for display.
	Value string
	// Reason says what is wrong, e.g. "must be a JSON object, got array".
	Reason string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return "event: " + e.Reason
	}
	return "event: field " + strconv.Quote(e.Field) + " " + e.Reason
}

// FieldErrors returns every *FieldError in err's tree, in order. The HTTP API
// uses it to list each problem separately.
func FieldErrors(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case nil:
		case *FieldError:
			out = append(out, e)
		case interface{ Unwrap() []error }:
			for _, inner := range e.Unwrap() {
				walk(inner)
			}
		default:
			walk(errors.Unwrap(err))
		}
	}
	walk(err)
	return out
}

// fail joins errs and marks the result permanent.
func fail(errs ...error) error {
	if len(errs) == 1 {
		return permanent.Wrap(errs[0])
	}
	return permanent.Wrap(errors.Join(errs...))
}

// maxDisplay bounds FieldError.Value so a 1 MiB payload does not end up in a
// log line or a poison message header.
const maxDisplay = 64

// display returns s cut to maxDisplay bytes on a rune boundary.
func display(s string) string {
	if len(s) <= maxDisplay {
		return s
	}
	cut := maxDisplay
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// displayJSON renders a decoded value compactly for FieldError.Value. It only
// runs on the error path.
func displayJSON(v any) string {
	if s, ok := v.(string); ok {
		return display(s)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return display(fmt.Sprint(v))
	}
	return display(string(b))
}

// kind names the JSON type of a value decoded into any.
func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "boolean"
	default:
		return fmt.Sprintf("%T", v)
	}
}

// typeError reports a value of the wrong JSON type.
func typeError(field string, v any, want string) *FieldError {
	return &FieldError{Field: field, Value: displayJSON(v), Reason: "must be " + want + ", got " + kind(v)}
}

// valueError reports a string of the right type but a bad value; the value is
// quoted into the reason so the message alone names it.
func valueError(field, s, reason string) *FieldError {
	v := display(s)
	return &FieldError{Field: field, Value: v, Reason: reason + ", got " + strconv.Quote(v)}
}
