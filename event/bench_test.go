package event_test

import (
	"encoding/json"
	"testing"

	"github.com/eventpipe/eventpipe/event"
)

// BenchmarkParse measures the hot path per event. The baseline sub-benchmark
// is a bare json.Unmarshal into map[string]any, the least any JSON decoder of
// this envelope must do, so the cost of validation and mapping is the gap.
func BenchmarkParse(b *testing.B) {
	noID := `{"eventType":"order.created","timestamp":"2025-09-06T10:30:00Z","source":"order-service",` +
		`"payload":{"orderId":"order-12345","customerId":"customer-67890","amount":999.99,"currency":"CNY"},` +
		`"metadata":{"traceId":"trace-abcdef-123456"}}`
	cases := []struct {
		name  string
		input string
	}{
		{name: "seed", input: designSample},
		{name: "cloudevent", input: cloudEvent},
		{name: "seed_derived_id", input: noID},
	}
	for _, c := range cases {
		data := []byte(c.input)
		b.Run("baseline_unmarshal/"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				var v any
				if err := json.Unmarshal(data, &v); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("parse/"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := event.Parse(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
