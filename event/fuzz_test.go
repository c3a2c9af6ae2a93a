package event_test

import (
	"testing"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/permanent"
)

// FuzzParse checks that no input panics, that every rejection is a permanent
// *FieldError, and that every accepted event is complete. Split runs on the
// same input, since the ingest endpoint feeds it raw request bodies.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		designSample,
		cloudEvent,
		`{"eventType":"a"}`,
		`{"eventType":"a","payload":null,"metadata":null,"priority":"low"}`,
		`{"eventType":"a","timestamp":"2025-09-06T10:30:00","messageId":""}`,
		`{"specversion":"1.0","type":"a","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`,
		`{"specversion":"1.0","type":"a","data_base64":"e30="}`,
		`{"specversion":"1.0","type":"a","datacontenttype":"text/plain","data":"x"}`,
		`[{"eventType":"a"},{"eventType":"b"}]`,
		`{"eventType":"a b","payload":[1],"priority":"x","timestamp":"y"}`,
		"{\"eventType\":\"\xff\"}",
		`{"eventType":"\u0000"}`,
		`{"eventType":1e999}`,
		``, `null`, `[]`, `{}`, `"x"`,
	} {
		f.Add([]byte(seed))
	}
	p := event.Parser{MaxBytes: 4096}
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := p.Parse(data)
		if err != nil {
			if ev != nil {
				t.Fatalf("event and error both returned: %v", err)
			}
			if !permanent.Is(err) {
				t.Fatalf("error not permanent: %v", err)
			}
			if len(event.FieldErrors(err)) == 0 {
				t.Fatalf("error has no *FieldError: %v", err)
			}
		} else {
			switch {
			case ev.EventType == "":
				t.Fatalf("accepted event without eventType: %q", data)
			case ev.MessageID == "":
				t.Fatalf("accepted event without messageId: %q", data)
			case !ev.Priority.Valid():
				t.Fatalf("accepted event with priority %q: %q", ev.Priority, data)
			case ev.Payload == nil:
				t.Fatalf("accepted event with nil payload: %q", data)
			}
		}
		if elems, err := event.Split(data); err == nil {
			if len(elems) == 0 {
				t.Fatalf("Split returned no elements and no error: %q", data)
			}
		} else if !permanent.Is(err) || len(event.FieldErrors(err)) == 0 {
			t.Fatalf("Split error not a permanent *FieldError: %v", err)
		}
	})
}
