package api

import (
	"fmt"
	"net/http"

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
	if err := s.deps.Events.PublishEvents(r.Context(), events); err != nil {
		s.log.Warn("publish ingested events", "events", len(events), "token_name", tokenName(r.Context()), "error", err)
		writeError(w, http.StatusServiceUnavailable, "publish events: "+err.Error())
		return
	}
	ids := make([]string, len(events))
	for i, ev := range events {
		ids[i] = ev.ID
	}
	writeJSON(w, http.StatusAccepted, AcceptedEvents{Accepted: len(events), IDs: ids})
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
