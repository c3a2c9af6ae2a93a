package event_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/permanent"
)

// designSample is the envelope from DESIGN.md, byte for byte.
const designSample = `{
  "messageId": "msg-20250906-123456",
  "eventType": "order.created",
  "timestamp": "2025-09-06T10:30:00Z",
  "source": "order-service",
  "destination": "schedule-platform",
  "priority": "HIGH",
  "payload": {"orderId": "order-12345", "customerId": "customer-67890", "amount": 999.99, "currency": "CNY"},
  "metadata": {"traceId": "trace-abcdef-123456", "version": "1.0", "schema": "order.created.v1"}
}`

func TestParse_accepts_design_sample_unchanged(t *testing.T) {
	t.Parallel()
	ev, err := event.Parse([]byte(designSample))
	require.NoError(t, err)
	assert.Equal(t, &event.Event{
		MessageID:   "msg-20250906-123456",
		EventType:   "order.created",
		Timestamp:   time.Date(2025, 9, 6, 10, 30, 0, 0, time.UTC),
		Source:      "order-service",
		Destination: "schedule-platform",
		Priority:    event.PriorityHigh,
		Payload: map[string]any{"orderId": "order-12345", "customerId": "customer-67890",
			"amount": 999.99, "currency": "CNY"},
		Metadata: map[string]any{"traceId": "trace-abcdef-123456", "version": "1.0", "schema": "order.created.v1"},
	}, ev)
	assert.Equal(t, "trace-abcdef-123456", ev.TraceID())
}

func TestParse_fills_fields_and_defaults(t *testing.T) {
	t.Parallel()
	utc := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339Nano, s)
		require.NoError(t, err)
		return tm
	}
	tests := []struct {
		name  string
		input string
		check func(t *testing.T, ev *event.Event)
	}{
		{
			name:  "minimal event gets MEDIUM priority, empty payload, nil metadata, zero time",
			input: `{"eventType":"a"}`,
			check: func(t *testing.T, ev *event.Event) {
				assert.Equal(t, event.PriorityMedium, ev.Priority)
				assert.NotNil(t, ev.Payload)
				assert.Empty(t, ev.Payload)
				assert.Nil(t, ev.Metadata)
				assert.True(t, ev.Timestamp.IsZero())
				assert.Empty(t, ev.TraceID())
			},
		},
		{
			name:  "null payload, metadata, timestamp, priority and messageId count as absent",
			input: `{"eventType":"a","payload":null,"metadata":null,"timestamp":null,"priority":null,"messageId":null,"source":null}`,
			check: func(t *testing.T, ev *event.Event) {
				assert.Equal(t, event.PriorityMedium, ev.Priority)
				assert.Equal(t, map[string]any{}, ev.Payload)
				assert.Nil(t, ev.Metadata)
				assert.True(t, ev.Timestamp.IsZero())
				assert.Regexp(t, `^evt-[0-9a-f]{32}$`, ev.MessageID)
			},
		},
		{
			name:  "priority in any case",
			input: `{"eventType":"a","priority":"lOw"}`,
			check: func(t *testing.T, ev *event.Event) { assert.Equal(t, event.PriorityLow, ev.Priority) },
		},
		{
			name:  "empty priority is MEDIUM",
			input: `{"eventType":"a","priority":""}`,
			check: func(t *testing.T, ev *event.Event) { assert.Equal(t, event.PriorityMedium, ev.Priority) },
		},
		{
			name:  "empty messageId is derived",
			input: `{"eventType":"a","messageId":""}`,
			check: func(t *testing.T, ev *event.Event) { assert.Regexp(t, `^evt-[0-9a-f]{32}$`, ev.MessageID) },
		},
		{
			name:  "empty timestamp is the zero time",
			input: `{"eventType":"a","timestamp":""}`,
			check: func(t *testing.T, ev *event.Event) { assert.True(t, ev.Timestamp.IsZero()) },
		},
		{
			name:  "RFC 3339 with nanoseconds and offset",
			input: `{"eventType":"a","timestamp":"2025-09-06T18:30:00.123456789+08:00"}`,
			check: func(t *testing.T, ev *event.Event) {
				assert.True(t, utc("2025-09-06T10:30:00.123456789Z").Equal(ev.Timestamp))
			},
		},
		{
			name:  "zone-less Java LocalDateTime is UTC",
			input: `{"eventType":"a","timestamp":"2025-09-06T10:30:00"}`,
			check: func(t *testing.T, ev *event.Event) {
				assert.Equal(t, time.Date(2025, 9, 6, 10, 30, 0, 0, time.UTC), ev.Timestamp)
			},
		},
		{
			name:  "zone-less with fraction is UTC",
			input: `{"eventType":"a","timestamp":"2025-09-06T10:30:00.250"}`,
			check: func(t *testing.T, ev *event.Event) {
				assert.Equal(t, time.Date(2025, 9, 6, 10, 30, 0, 250e6, time.UTC), ev.Timestamp)
			},
		},
		{
			name:  "zone-less without seconds (LocalDateTime.toString) is UTC",
			input: `{"eventType":"a","timestamp":"2025-09-06T10:30"}`,
			check: func(t *testing.T, ev *event.Event) {
				assert.Equal(t, time.Date(2025, 9, 6, 10, 30, 0, 0, time.UTC), ev.Timestamp)
			},
		},
		{
			name:  "unknown top-level keys are ignored",
			input: `{"eventType":"a","extra":{"x":[1,2]},"version":3}`,
			check: func(t *testing.T, ev *event.Event) { assert.Equal(t, "a", ev.EventType) },
		},
		{
			name:  "numbers decode as float64 so conditions can compare them",
			input: `{"eventType":"a","payload":{"amount":1200,"n":{"x":[1.5]}}}`,
			check: func(t *testing.T, ev *event.Event) {
				assert.Equal(t, float64(1200), ev.Payload["amount"])
				assert.Equal(t, map[string]any{"x": []any{1.5}}, ev.Payload["n"])
			},
		},
		{
			name:  "eventType of 255 bytes and unicode letters is accepted",
			input: `{"eventType":"` + strings.Repeat("é", 127) + `x"}`,
			check: func(t *testing.T, ev *event.Event) { assert.Len(t, ev.EventType, 255) },
		},
		{
			name:  "messageId may contain spaces",
			input: `{"eventType":"a","messageId":"msg 1"}`,
			check: func(t *testing.T, ev *event.Event) { assert.Equal(t, "msg 1", ev.MessageID) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := event.Parse([]byte(tt.input))
			require.NoError(t, err)
			require.NotNil(t, ev)
			tt.check(t, ev)
		})
	}
}

func TestParse_rejects_invalid_events_naming_field_and_value(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 256)
	tests := []struct {
		name  string
		input string
		// want lists the message of every *FieldError, in order.
		want []string
	}{
		{name: "empty input", input: ``,
			want: []string{"event: invalid JSON at byte 0: unexpected end of JSON input"}},
		{name: "truncated JSON", input: `{"eventType":"a"`,
			want: []string{"event: invalid JSON at byte 16: unexpected end of JSON input"}},
		{name: "trailing data", input: `{"eventType":"a"} x`,
			want: []string{"event: invalid JSON at byte 19: invalid character 'x' after top-level value"}},
		{name: "two objects", input: `{"eventType":"a"}{"eventType":"b"}`,
			want: []string{"event: invalid JSON at byte 18: invalid character '{' after top-level value"}},
		{name: "invalid UTF-8", input: "{\"eventType\":\"a\xff\"}",
			want: []string{"event: invalid UTF-8 at byte 16"}},
		{name: "array instead of object", input: `[{"eventType":"a"}]`,
			want: []string{`event: must be a JSON object, got array`}},
		{name: "string instead of object", input: `"order.created"`,
			want: []string{`event: must be a JSON object, got string`}},
		{name: "null instead of object", input: `null`,
			want: []string{`event: must be a JSON object, got null`}},
		{name: "eventType missing", input: `{"payload":{}}`,
			want: []string{`event: field "eventType" is required`}},
		{name: "eventType null", input: `{"eventType":null}`,
			want: []string{`event: field "eventType" is required`}},
		{name: "eventType empty", input: `{"eventType":""}`,
			want: []string{`event: field "eventType" is required`}},
		{name: "eventType is a number", input: `{"eventType":42}`,
			want: []string{`event: field "eventType" must be a string, got number`}},
		{name: "eventType with a space", input: `{"eventType":"order created"}`,
			want: []string{`event: field "eventType" must not contain whitespace or control characters, got "order created"`}},
		{name: "eventType with a tab", input: `{"eventType":"order\tcreated"}`,
			want: []string{`event: field "eventType" must not contain whitespace or control characters, got "order\tcreated"`}},
		{name: "eventType with a zero-width space", input: `{"eventType":"order\u200bcreated"}`,
			want: []string{`event: field "eventType" must not contain whitespace or control characters, got "order\u200bcreated"`}},
		{name: "eventType too long", input: `{"eventType":"` + long + `"}`,
			want: []string{`event: field "eventType" must be at most 255 bytes long, got "` + long[:64] + `…"`}},
		{name: "payload is an array", input: `{"eventType":"a","payload":[1,2]}`,
			want: []string{`event: field "payload" must be a JSON object, got array`}},
		{name: "payload is a string", input: `{"eventType":"a","payload":"{}"}`,
			want: []string{`event: field "payload" must be a JSON object, got string`}},
		{name: "payload is a number", input: `{"eventType":"a","payload":1}`,
			want: []string{`event: field "payload" must be a JSON object, got number`}},
		{name: "metadata is an array", input: `{"eventType":"a","metadata":["t"]}`,
			want: []string{`event: field "metadata" must be a JSON object, got array`}},
		{name: "metadata is a boolean", input: `{"eventType":"a","metadata":true}`,
			want: []string{`event: field "metadata" must be a JSON object, got boolean`}},
		{name: "unknown priority", input: `{"eventType":"a","priority":"URGENT"}`,
			want: []string{`event: field "priority" must be HIGH, MEDIUM or LOW, got "URGENT"`}},
		{name: "numeric priority", input: `{"eventType":"a","priority":1}`,
			want: []string{`event: field "priority" must be a string, got number`}},
		{name: "timestamp not a time", input: `{"eventType":"a","timestamp":"yesterday"}`,
			want: []string{`event: field "timestamp" must be an RFC 3339 time such as 2025-09-06T10:30:00Z, got "yesterday"`}},
		{name: "timestamp month 13", input: `{"eventType":"a","timestamp":"2025-13-01T00:00:00Z"}`,
			want: []string{`event: field "timestamp" must be an RFC 3339 time such as 2025-09-06T10:30:00Z, got "2025-13-01T00:00:00Z"`}},
		{name: "timestamp as epoch millis", input: `{"eventType":"a","timestamp":1757154600000}`,
			want: []string{`event: field "timestamp" must be a string, got number`}},
		{name: "messageId is a number", input: `{"eventType":"a","messageId":7}`,
			want: []string{`event: field "messageId" must be a string, got number`}},
		{name: "messageId too long", input: `{"eventType":"a","messageId":"` + long + `"}`,
			want: []string{`event: field "messageId" must be at most 255 bytes long, got "` + long[:64] + `…"`}},
		{name: "traceId too long", input: `{"eventType":"a","metadata":{"traceId":"` + long + `"}}`,
			want: []string{`event: field "metadata.traceId" must be at most 255 bytes long, got "` + long[:64] + `…"`}},
		{name: "cloudevent traceid too long", input: `{"specversion":"1.0","id":"1","source":"s","type":"a","traceid":"` + long + `"}`,
			want: []string{`event: field "metadata.traceId" must be at most 255 bytes long, got "` + long[:64] + `…"`}},
		{name: "messageId with a newline", input: `{"eventType":"a","messageId":"m\n1"}`,
			want: []string{`event: field "messageId" must not contain control characters, got "m\n1"`}},
		{name: "source is a number", input: `{"eventType":"a","source":1}`,
			want: []string{`event: field "source" must be a string, got number`}},
		{name: "destination is an object", input: `{"eventType":"a","destination":{}}`,
			want: []string{`event: field "destination" must be a string, got object`}},
		{
			name:  "every problem is reported, in envelope order",
			input: `{"messageId":1,"timestamp":"now","priority":"P1","payload":[],"metadata":"m"}`,
			want: []string{
				`event: field "messageId" must be a string, got number`,
				`event: field "eventType" is required`,
				`event: field "timestamp" must be an RFC 3339 time such as 2025-09-06T10:30:00Z, got "now"`,
				`event: field "priority" must be HIGH, MEDIUM or LOW, got "P1"`,
				`event: field "payload" must be a JSON object, got array`,
				`event: field "metadata" must be a JSON object, got string`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := event.Parse([]byte(tt.input))
			require.Error(t, err)
			assert.Nil(t, ev)
			assert.True(t, permanent.Is(err), "a bad event must not be retried")
			assert.Equal(t, tt.want, messages(event.FieldErrors(err)))
			assert.Equal(t, strings.Join(tt.want, "\n"), err.Error())
		})
	}
}

func TestParse_field_error_carries_field_value_and_reason(t *testing.T) {
	t.Parallel()
	_, err := event.Parse([]byte(`{"eventType":"a","payload":[1,2,3]}`))
	var fe *event.FieldError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, event.FieldError{Field: "payload", Value: "[1,2,3]", Reason: "must be a JSON object, got array"}, *fe)
	assert.Equal(t, `event: field "payload" must be a JSON object, got array`, err.Error())
}

func TestParse_truncates_long_values_for_display(t *testing.T) {
	t.Parallel()
	payload := `["` + strings.Repeat("é", 100) + `"]`
	_, err := event.Parse([]byte(`{"eventType":"a","payload":` + payload + `}`))
	var fe *event.FieldError
	require.ErrorAs(t, err, &fe)
	assert.LessOrEqual(t, len(fe.Value), 64+len("…"))
	assert.True(t, strings.HasPrefix(fe.Value, `["éé`))
	assert.True(t, strings.HasSuffix(fe.Value, "é…"), "cut on a rune boundary: %q", fe.Value)
}

func TestParser_enforces_size_limit_before_decoding(t *testing.T) {
	t.Parallel()
	pad := func(n int) []byte {
		// A valid event of exactly n bytes.
		head := `{"eventType":"a","payload":{"p":"`
		tail := `"}}`
		return []byte(head + strings.Repeat("x", n-len(head)-len(tail)) + tail)
	}
	tests := []struct {
		name    string
		parser  event.Parser
		input   []byte
		wantErr string
	}{
		{name: "default limit accepts 1 MiB", parser: event.Parser{}, input: pad(event.DefaultMaxBytes)},
		{name: "default limit rejects 1 MiB + 1", parser: event.Parser{}, input: pad(event.DefaultMaxBytes + 1),
			wantErr: "event: size 1048577 bytes exceeds the limit of 1048576 bytes"},
		{name: "negative limit means default", parser: event.Parser{MaxBytes: -1}, input: pad(event.DefaultMaxBytes)},
		{name: "custom limit accepts its size", parser: event.Parser{MaxBytes: 100}, input: pad(100)},
		{name: "custom limit rejects one more byte", parser: event.Parser{MaxBytes: 100}, input: pad(101),
			wantErr: "event: size 101 bytes exceeds the limit of 100 bytes"},
		{name: "size is checked before syntax", parser: event.Parser{MaxBytes: 3}, input: []byte(`{{{{`),
			wantErr: "event: size 4 bytes exceeds the limit of 3 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := tt.parser.Parse(tt.input)
			if tt.wantErr == "" {
				require.NoError(t, err)
				assert.Equal(t, "a", ev.EventType)
				return
			}
			require.Error(t, err)
			assert.True(t, permanent.Is(err))
			assert.Equal(t, tt.wantErr, err.Error())
		})
	}
}

func TestParse_derives_stable_message_id_from_content(t *testing.T) {
	t.Parallel()
	const base = `{"eventType":"order.created","timestamp":"2025-09-06T10:30:00Z","source":"s","payload":{"a":1,"b":"x"},"metadata":{"traceId":"t"}}`
	tests := []struct {
		name  string
		other string
		same  bool
	}{
		{name: "identical bytes", other: base, same: true},
		{name: "whitespace and key order do not matter", same: true,
			other: "{ \"metadata\": {\"traceId\": \"t\"},\n \"payload\": {\"b\": \"x\", \"a\": 1},\n \"source\": \"s\", \"timestamp\": \"2025-09-06T10:30:00Z\", \"eventType\": \"order.created\" }"},
		{name: "number spelling does not matter", same: true,
			other: `{"eventType":"order.created","timestamp":"2025-09-06T10:30:00Z","source":"s","payload":{"a":1.0e0,"b":"x"},"metadata":{"traceId":"t"}}`},
		{name: "same instant in another zone", same: true,
			other: `{"eventType":"order.created","timestamp":"2025-09-06T12:30:00+02:00","source":"s","payload":{"a":1,"b":"x"},"metadata":{"traceId":"t"}}`},
		{name: "explicit MEDIUM priority equals the default", same: true,
			other: `{"eventType":"order.created","timestamp":"2025-09-06T10:30:00Z","source":"s","payload":{"a":1,"b":"x"},"metadata":{"traceId":"t"},"priority":"medium"}`},
		{name: "different payload value",
			other: `{"eventType":"order.created","timestamp":"2025-09-06T10:30:00Z","source":"s","payload":{"a":2,"b":"x"},"metadata":{"traceId":"t"}}`},
		{name: "different event type",
			other: `{"eventType":"order.updated","timestamp":"2025-09-06T10:30:00Z","source":"s","payload":{"a":1,"b":"x"},"metadata":{"traceId":"t"}}`},
		{name: "different timestamp",
			other: `{"eventType":"order.created","timestamp":"2025-09-06T10:30:01Z","source":"s","payload":{"a":1,"b":"x"},"metadata":{"traceId":"t"}}`},
		{name: "different source",
			other: `{"eventType":"order.created","timestamp":"2025-09-06T10:30:00Z","source":"s2","payload":{"a":1,"b":"x"},"metadata":{"traceId":"t"}}`},
		{name: "different metadata",
			other: `{"eventType":"order.created","timestamp":"2025-09-06T10:30:00Z","source":"s","payload":{"a":1,"b":"x"},"metadata":{"traceId":"u"}}`},
		{name: "different priority",
			other: `{"eventType":"order.created","timestamp":"2025-09-06T10:30:00Z","source":"s","payload":{"a":1,"b":"x"},"metadata":{"traceId":"t"},"priority":"HIGH"}`},
		{name: "value moved between payload and metadata",
			other: `{"eventType":"order.created","timestamp":"2025-09-06T10:30:00Z","source":"s","payload":{"a":1,"b":"x","traceId":"t"}}`},
	}
	want, err := event.Parse([]byte(base))
	require.NoError(t, err)
	require.Regexp(t, `^evt-[0-9a-f]{32}$`, want.MessageID)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := event.Parse([]byte(tt.other))
			require.NoError(t, err)
			if tt.same {
				assert.Equal(t, want.MessageID, got.MessageID)
			} else {
				assert.NotEqual(t, want.MessageID, got.MessageID)
			}
		})
	}
}

func TestParse_empty_and_absent_metadata_derive_the_same_id(t *testing.T) {
	t.Parallel()
	a, err := event.Parse([]byte(`{"eventType":"a"}`))
	require.NoError(t, err)
	b, err := event.Parse([]byte(`{"eventType":"a","metadata":{},"payload":{}}`))
	require.NoError(t, err)
	assert.Equal(t, a.MessageID, b.MessageID)
}

func TestParsePriority(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    event.Priority
		wantErr string
	}{
		{name: "empty is MEDIUM", in: "", want: event.PriorityMedium},
		{name: "upper HIGH", in: "HIGH", want: event.PriorityHigh},
		{name: "lower medium", in: "medium", want: event.PriorityMedium},
		{name: "mixed Low", in: "Low", want: event.PriorityLow},
		{name: "unknown", in: "urgent", wantErr: `priority must be HIGH, MEDIUM or LOW, got "urgent"`},
		{name: "padded is not trimmed", in: " HIGH", wantErr: `priority must be HIGH, MEDIUM or LOW, got " HIGH"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := event.ParsePriority(tt.in)
			if tt.wantErr != "" {
				require.EqualError(t, err, tt.wantErr)
				assert.False(t, got.Valid())
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			assert.True(t, got.Valid())
		})
	}
}

func TestFieldErrors_of_non_field_errors_is_empty(t *testing.T) {
	t.Parallel()
	assert.Empty(t, event.FieldErrors(nil))
	assert.Empty(t, event.FieldErrors(errors.New("x")))
	fe := &event.FieldError{Field: "f", Reason: "r"}
	assert.Equal(t, []*event.FieldError{fe}, event.FieldErrors(permanent.Wrap(errors.Join(errors.New("x"), fe))))
}

func messages(errs []*event.FieldError) []string {
	out := make([]string, len(errs))
	for i, e := range errs {
		out[i] = e.Error()
	}
	return out
}
