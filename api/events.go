package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/eventpipe/eventpipe/event"
)

// EventDetail names one problem with one event of a rejected request.
type EventDetail struct {
	// Index is the event's position in the request (0 for a single event).
	Index int `json:"index"`
	// Field is the offending key, "" when the problem is the event as a whole.
	Field string `json:"field,omitempty"`
	// Value is the offending value, truncated.
	Value string `json:"value,omitempty"`
	Error string `json:"error"`
}

// AcceptedEvents is the 202 answer of POST /api/v1/events.
type AcceptedEvents struct {
	Accepted int `json:"accepted"`
	// IDs are the events' messageIds, in request order.
	IDs []string `json:"ids"`
}

// handleEvents ingests one event or an array of them. It is all or nothing:
// if any event is invalid nothing is published (400 listing every problem),
// so a client can fix and resend the whole batch without duplicates. 202
// means every event was published; 503 means the broker refused and the
// client should retry (redelivered events keep their ids).
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readJSONBody(w, r)
	if !ok {
		return
	}
	raws, err := event.Split(body)
	if err != nil {
		if details := fieldDetails(-1, err); len(details) > 0 {
			writeError(w, http.StatusBadRequest, "invalid events", details...)
			return
		}
		writeError(w, http.StatusBadRequest, "invalid request body: "+err.Error())
		return
	}
	if len(raws) == 0 {
		writeError(w, http.StatusBadRequest, "no events in the request: send an event object or a non-empty array")
		return
	}
	events := make([]Ingested, 0, len(raws))
	var details []any
	for i, raw := range raws {
		ev, err := s.parser.Parse(raw)
		if err != nil {
			details = append(details, fieldDetails(i, err)...)
			continue
		}
		events = append(events, Ingested{ID: ev.MessageID, Raw: raw, Event: ev})
	}
	if len(details) > 0 {
		writeError(w, http.StatusBadRequest, "invalid events", details...)
		return
	}
	published, inFlight, err := s.publish(r.Context(), events)
	if err != nil {
		s.log.Warn("publish ingested events", "events", len(events), "accepted", published,
			"token_name", tokenName(r.Context()), "error", err)
		writePublishFailure(w, events, published, inFlight, err)
		return
	}
	ids := make([]string, len(events))
	for i, ev := range events {
		ids[i] = ev.ID
	}
	writeJSON(w, http.StatusAccepted, AcceptedEvents{Accepted: len(events), IDs: ids})
}

// publishChunk is how many events one PublishEvents call carries: a batch is
// published chunk by chunk so that, when the deadline comes, the answer can
// say which events are on the broker.
const publishChunk = 100

// publish publishes events chunk by chunk until done, an error, or ctx's
// end (the request deadline), whichever comes first. It returns how many
// events are known published (a prefix of events) and how many after them
// were being published when it gave up (their fate is unknown). A chunk
// still being published when ctx ends finishes in the background; no chunk
// starts after it.
func (s *Server) publish(ctx context.Context, events []Ingested) (published, inFlight int, err error) {
	var done atomic.Int64
	result := make(chan error, 1)
	panicked := make(chan any, 1)
	go func() {
		defer func() {
			// Re-raised on the request's goroutine, where the recoverer
			// answers 500.
			if p := recover(); p != nil {
				panicked <- p
			}
		}()
		for start := 0; start < len(events); start += publishChunk {
			if err := ctx.Err(); err != nil {
				result <- err
				return
			}
			end := min(start+publishChunk, len(events))
			if err := s.deps.Events.PublishEvents(ctx, events[start:end]); err != nil {
				result <- err
				return
			}
			done.Store(int64(end))
		}
		result <- nil
	}()
	select {
	case p := <-panicked:
		panic(p)
	case err := <-result:
		n := int(done.Load())
		if err != nil {
			// A failed chunk may be partly on the broker.
			return n, min(publishChunk, len(events)-n), err
		}
		return n, 0, nil
	case <-ctx.Done():
		n := int(done.Load())
		return n, min(publishChunk, len(events)-n), fmt.Errorf("the request deadline passed before the broker "+
			"confirmed every event: %w", ctx.Err())
	}
}

// PublishFailure is the 503 answer of POST /api/v1/events when the broker
// did not take every event in time: the events before index Accepted are on
// the broker, those listed in InDoubt may or may not be, the rest are not.
// Resending the whole request is safe: events keep their messageId, and the
// tasks they make are de-duplicated by id.
type PublishFailure struct {
	Error string `json:"error"`
	// Accepted counts the events, from the first, known to be published.
	Accepted int `json:"accepted"`
	// IDs are the messageIds of the accepted events.
	IDs []string `json:"ids"`
	// InDoubt are the indices of events whose publish was under way.
	InDoubt []int `json:"inDoubt"`
	// NotAccepted are the indices of events not published.
	NotAccepted []int `json:"notAccepted"`
}

// retryAfterSeconds is the Retry-After of a 503: a broker that is down
// usually is for longer than a moment.
const retryAfterSeconds = 5

// unavailable answers 503 with Retry-After and the JSON error body.
func unavailable(w http.ResponseWriter, msg string) {
	w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	writeError(w, http.StatusServiceUnavailable, msg)
}

func writePublishFailure(w http.ResponseWriter, events []Ingested, published, inFlight int, err error) {
	f := PublishFailure{Error: "publish events: " + err.Error(), Accepted: published,
		IDs: make([]string, published), InDoubt: []int{}, NotAccepted: []int{}}
	for i := range events {
		switch {
		case i < published:
			f.IDs[i] = events[i].ID
		case i < published+inFlight:
			f.InDoubt = append(f.InDoubt, i)
		default:
			f.NotAccepted = append(f.NotAccepted, i)
		}
	}
	w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
	writeJSON(w, http.StatusServiceUnavailable, f)
}

// fieldDetails lists each event.FieldError in err as a detail of the event at
// index. For index < 0 (a Split error: the request as a whole) only element
// errors, whose field is "[i]", become details, under their own index.
func fieldDetails(index int, err error) []any {
	fes := event.FieldErrors(err)
	out := make([]any, 0, len(fes))
	for _, fe := range fes {
		if index >= 0 {
			out = append(out, EventDetail{Index: index, Field: fe.Field, Value: fe.Value, Error: fe.Error()})
			continue
		}
		var i int
		if _, scanErr := fmt.Sscanf(fe.Field, "[%d]", &i); scanErr == nil {
			out = append(out, EventDetail{Index: i, Value: fe.Value, Error: "event " + fe.Reason})
		}
	}
	if len(out) == 0 && index >= 0 {
		// Parse reports only FieldErrors; this keeps any other error visible.
		out = append(out, EventDetail{Index: index, Error: err.Error()})
	}
	return out
}
