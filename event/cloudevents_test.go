package event_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/permanent"
)

const cloudEvent = `{
  "specversion": "1.0",
  "id": "ce-1",
  "type": "order.created",
  "source": "/orders",
  "time": "2025-09-06T10:30:00Z",
  "datacontenttype": "application/json",
  "subject": "order-12345",
  "dataschema": "https://example.com/order.created.v1.json",
  "priority": "high",
  "destination": "schedule-platform",
  "traceid": "trace-1",
  "retries": 2,
  "sampled": true,
  "data": {"orderId": "order-12345", "amount": 1200}
}`

func TestParse_maps_cloudevent_onto_envelope(t *testing.T) {
	t.Parallel()
	ev, err := event.Parse([]byte(cloudEvent))
	require.NoError(t, err)
	assert.Equal(t, &event.Event{
		MessageID:   "ce-1",
		EventType:   "order.created",
		Timestamp:   time.Date(2025, 9, 6, 10, 30, 0, 0, time.UTC),
		Source:      "/orders",
		Destination: "schedule-platform",
		Priority:    event.PriorityHigh,
		Payload:     map[string]any{"orderId": "order-12345", "amount": float64(1200)},
		Metadata: map[string]any{
			"subject":    "order-12345",
			"dataschema": "https://example.com/order.created.v1.json",
			"traceId":    "trace-1",
			"retries":    float64(2),
			"sampled":    true,
		},
	}, ev)
	assert.Equal(t, "trace-1", ev.TraceID())
}

func TestParse_cloudevent_variants(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		input string
		check func(t *testing.T, ev *event.Event)
	}{
		{
			name:  "minimal cloudevent has MEDIUM priority, empty payload, no metadata, derived id",
			input: `{"specversion":"1.0","type":"a"}`,
			check: func(t *testing.T, ev *event.Event) {
				assert.Equal(t, event.PriorityMedium, ev.Priority)
				assert.Equal(t, map[string]any{}, ev.Payload)
				assert.Nil(t, ev.Metadata)
				assert.Regexp(t, `^evt-[0-9a-f]{32}$`, ev.MessageID)
			},
		},
		{
			name:  "traceparent gives the trace id when there is no traceid",
			input: `{"specversion":"1.0","type":"a","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`,
			check: func(t *testing.T, ev *event.Event) {
				assert.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", ev.TraceID())
				assert.Equal(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ev.Metadata["traceparent"])
			},
		},
		{
			name:  "traceid wins over traceparent",
			input: `{"specversion":"1.0","type":"a","traceid":"t1","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`,
			check: func(t *testing.T, ev *event.Event) { assert.Equal(t, "t1", ev.TraceID()) },
		},
		{
			name:  "traceid wins over a traceId attribute",
			input: `{"specversion":"1.0","type":"a","traceId":"camel","traceid":"lower"}`,
			check: func(t *testing.T, ev *event.Event) {
				assert.Equal(t, "lower", ev.TraceID())
				assert.NotContains(t, ev.Metadata, "traceid")
			},
		},
		{
			name:  "malformed traceparent is kept but gives no trace id",
			input: `{"specversion":"1.0","type":"a","traceparent":"00-XYZ-00f067aa0ba902b7-01"}`,
			check: func(t *testing.T, ev *event.Event) {
				assert.Empty(t, ev.TraceID())
				assert.Equal(t, "00-XYZ-00f067aa0ba902b7-01", ev.Metadata["traceparent"])
			},
		},
		{
			name:  "all-zero traceparent trace id is invalid",
			input: `{"specversion":"1.0","type":"a","traceparent":"00-00000000000000000000000000000000-00f067aa0ba902b7-01"}`,
			check: func(t *testing.T, ev *event.Event) { assert.Empty(t, ev.TraceID()) },
		},
		{
			name:  "null attributes are absent",
			input: `{"specversion":"1.0","type":"a","subject":null,"data":null,"time":null}`,
			check: func(t *testing.T, ev *event.Event) {
				assert.Nil(t, ev.Metadata)
				assert.Equal(t, map[string]any{}, ev.Payload)
				assert.True(t, ev.Timestamp.IsZero())
			},
		},
		{
			name:  "structured content type with +json and parameters",
			input: `{"specversion":"1.0","type":"a","datacontenttype":"Application/CloudEvents+JSON; charset=utf-8","data":{"k":"v"}}`,
			check: func(t *testing.T, ev *event.Event) { assert.Equal(t, "v", ev.Payload["k"]) },
		},
		{
			name:  "a seed field in a cloudevent is just an attribute",
			input: `{"specversion":"1.0","type":"a","eventType":"b"}`,
			check: func(t *testing.T, ev *event.Event) {
				assert.Equal(t, "a", ev.EventType)
				assert.Equal(t, "b", ev.Metadata["eventType"])
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := event.Parse([]byte(tt.input))
			require.NoError(t, err)
			tt.check(t, ev)
		})
	}
}

func TestParse_rejects_invalid_cloudevents(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		input string
		want  []string
	}{
		{name: "unsupported specversion", input: `{"specversion":"0.3","type":"a"}`,
			want: []string{`event: field "specversion" must be "1.0", got "0.3"`}},
		{name: "numeric specversion", input: `{"specversion":1.0,"type":"a"}`,
			want: []string{`event: field "specversion" must be the string "1.0", got number`}},
		{name: "null specversion", input: `{"specversion":null,"type":"a"}`,
			want: []string{`event: field "specversion" must be the string "1.0", got null`}},
		{name: "type missing", input: `{"specversion":"1.0","id":"x"}`,
			want: []string{`event: field "type" is required`}},
		{name: "type with whitespace", input: `{"specversion":"1.0","type":"a b"}`,
			want: []string{`event: field "type" must not contain whitespace or control characters, got "a b"`}},
		{name: "id is a number", input: `{"specversion":"1.0","type":"a","id":5}`,
			want: []string{`event: field "id" must be a string, got number`}},
		{name: "bad time", input: `{"specversion":"1.0","type":"a","time":"06/09/2025"}`,
			want: []string{`event: field "time" must be an RFC 3339 time such as 2025-09-06T10:30:00Z, got "06/09/2025"`}},
		{name: "data_base64 is not supported", input: `{"specversion":"1.0","type":"a","data_base64":"e30="}`,
			want: []string{`event: field "data_base64" is not supported: send the payload as a JSON object in "data"`}},
		{name: "string data", input: `{"specversion":"1.0","type":"a","data":"hello"}`,
			want: []string{`event: field "data" must be a JSON object, got string`}},
		{name: "array data", input: `{"specversion":"1.0","type":"a","data":[1]}`,
			want: []string{`event: field "data" must be a JSON object, got array`}},
		{name: "non-JSON content type", input: `{"specversion":"1.0","type":"a","datacontenttype":"text/xml","data":{}}`,
			want: []string{`event: field "datacontenttype" must be a JSON media type such as application/json, got "text/xml"`}},
		{name: "unknown priority extension", input: `{"specversion":"1.0","type":"a","priority":"p0"}`,
			want: []string{`event: field "priority" must be HIGH, MEDIUM or LOW, got "p0"`}},
		{name: "destination extension not a string", input: `{"specversion":"1.0","type":"a","destination":1}`,
			want: []string{`event: field "destination" must be a string, got number`}},
		{
			name:  "object and array extensions are reported in name order",
			input: `{"specversion":"1.0","type":"a","zeta":{"x":1},"alpha":[1],"metadata":{"traceId":"t"}}`,
			want: []string{
				`event: field "alpha" must be a string, number or boolean (CloudEvents attribute), got array`,
				`event: field "metadata" must be a string, number or boolean (CloudEvents attribute), got object`,
				`event: field "zeta" must be a string, number or boolean (CloudEvents attribute), got object`,
			},
		},
		{
			name:  "every problem is reported",
			input: `{"specversion":"2.0","data_base64":"AA==","data":"x"}`,
			want: []string{
				`event: field "specversion" must be "1.0", got "2.0"`,
				`event: field "type" is required`,
				`event: field "data_base64" is not supported: send the payload as a JSON object in "data"`,
				`event: field "data" must be a JSON object, got string`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := event.Parse([]byte(tt.input))
			require.Error(t, err)
			assert.Nil(t, ev)
			assert.True(t, permanent.Is(err))
			assert.Equal(t, tt.want, messages(event.FieldErrors(err)))
			assert.Equal(t, strings.Join(tt.want, "\n"), err.Error())
		})
	}
}
