// Package event holds the business event envelope: parsing (seed JSON and
// CloudEvents structured JSON), validation and derived ids.
package event

import "time"

// Priority is an event's or task's priority.
type Priority string

// Priorities, highest first.
const (
	PriorityHigh   Priority = "HIGH"
	PriorityMedium Priority = "MEDIUM"
	PriorityLow    Priority = "LOW"
)

// Event is a parsed, validated business event. Parse fills every field: a
// missing messageId is derived from the content, a missing priority is MEDIUM.
type Event struct {
	MessageID   string         `json:"messageId"`
	EventType   string         `json:"eventType"`
	Timestamp   time.Time      `json:"timestamp"`
	Source      string         `json:"source,omitempty"`
	Destination string         `json:"destination,omitempty"`
	Priority    Priority       `json:"priority"`
	Payload     map[string]any `json:"payload"`
	Metadata    map[string]any `json:"metadata,omitempty"`
}

// TraceID returns metadata.traceId when it is a non-empty string, else "".
// It becomes the correlation id of every task and result made from the event.
func (e *Event) TraceID() string {
	if s, ok := e.Metadata["traceId"].(string); ok {
		return s
	}
	return ""
}
