package event_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/permanent"
)

func TestSplit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		input   string
		want    []string
		wantErr []string
	}{
		{name: "one object", input: `{"eventType":"a"}`, want: []string{`{"eventType":"a"}`}},
		{name: "one object with surrounding whitespace", input: "\n\t {\"eventType\":\"a\"} \r\n",
			want: []string{`{"eventType":"a"}`}},
		{name: "array of objects", input: `[ {"eventType":"a"}, {"eventType":"b"},{"eventType":"c"} ]`,
			want: []string{`{"eventType":"a"}`, `{"eventType":"b"}`, `{"eventType":"c"}`}},
		{name: "elements are not validated as events", input: `[{}]`, want: []string{`{}`}},
		{name: "empty input", input: ``,
			wantErr: []string{`event: is empty: want a JSON object or an array of objects`}},
		{name: "whitespace only", input: " \n ",
			wantErr: []string{`event: is empty: want a JSON object or an array of objects`}},
		{name: "empty array", input: `[]`,
			wantErr: []string{`event: is an empty array: want at least one event`}},
		{name: "scalar", input: `42`,
			wantErr: []string{`event: must be a JSON object or an array of objects, got number`}},
		{name: "invalid JSON object", input: `{"eventType":}`,
			wantErr: []string{`event: invalid JSON at byte 14: invalid character '}' looking for beginning of value`}},
		{name: "invalid JSON array", input: `[{"eventType":"a"},]`,
			wantErr: []string{`event: invalid JSON at byte 20: invalid character ']' looking for beginning of value`}},
		{name: "garbage", input: `hello`,
			wantErr: []string{`event: invalid JSON at byte 1: invalid character 'h' looking for beginning of value`}},
		{
			name:  "every non-object element is named by index",
			input: `[{"eventType":"a"}, "x", [1], null, 3, true]`,
			wantErr: []string{
				`event: field "[1]" must be a JSON object, got string`,
				`event: field "[2]" must be a JSON object, got array`,
				`event: field "[3]" must be a JSON object, got null`,
				`event: field "[4]" must be a JSON object, got number`,
				`event: field "[5]" must be a JSON object, got boolean`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := event.Split([]byte(tt.input))
			if tt.wantErr != nil {
				require.Error(t, err)
				assert.Nil(t, got)
				assert.True(t, permanent.Is(err))
				assert.Equal(t, tt.wantErr, messages(event.FieldErrors(err)))
				return
			}
			require.NoError(t, err)
			gotS := make([]string, len(got))
			for i, raw := range got {
				gotS[i] = string(raw)
			}
			assert.Equal(t, tt.want, gotS)
		})
	}
}

func TestSplit_elements_do_not_alias_input(t *testing.T) {
	t.Parallel()
	in := []byte(`{"eventType":"a"}`)
	got, err := event.Split(in)
	require.NoError(t, err)
	in[2] = 'X'
	assert.JSONEq(t, `{"eventType":"a"}`, string(got[0]))
}

func TestExamples_parse_as_documented(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../examples/events/*.json")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			data, err := os.ReadFile(f)
			require.NoError(t, err)
			elems, err := event.Split(data)
			require.NoError(t, err)
			for _, raw := range elems {
				ev, err := event.Parse(raw)
				if strings.HasPrefix(filepath.Base(f), "invalid-") {
					assert.Error(t, err)
					continue
				}
				require.NoError(t, err)
				assert.NotEmpty(t, ev.EventType)
				assert.NotEmpty(t, ev.TraceID(), "examples carry a trace id")
			}
		})
	}
}

func TestExamples_hold_the_documented_values(t *testing.T) {
	t.Parallel()
	load := func(name string) *event.Event {
		data, err := os.ReadFile(filepath.Join("../examples/events", name))
		require.NoError(t, err)
		ev, err := event.Parse(data)
		require.NoError(t, err)
		return ev
	}
	sample := load("order-created.json")
	want, err := event.Parse([]byte(designSample))
	require.NoError(t, err)
	assert.Equal(t, want, sample, "order-created.json is the DESIGN.md sample")

	high := load("order-created-high.json")
	assert.Equal(t, float64(1200), high.Payload["amount"])
	assert.NotEqual(t, sample.MessageID, high.MessageID)

	pay := load("payment-completed.json")
	assert.Equal(t, "payment.completed", pay.EventType)
	assert.Equal(t, map[string]any{"paymentId": "pay-1", "orderId": "order-12345", "status": "SUCCESS",
		"amount": float64(1200)}, pay.Payload)

	ce := load("cloudevent-order-created.json")
	assert.Equal(t, "order.created", ce.EventType)
	assert.Equal(t, event.PriorityHigh, ce.Priority)

	data, err := os.ReadFile("../examples/events/batch.json")
	require.NoError(t, err)
	var batch []json.RawMessage
	require.NoError(t, json.Unmarshal(data, &batch))
	assert.Len(t, batch, 3)

	data, err = os.ReadFile("../examples/events/invalid-missing-type.json")
	require.NoError(t, err)
	_, err = event.Parse(data)
	assert.EqualError(t, err, `event: field "eventType" is required`)
}
