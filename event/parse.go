package event

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// DefaultMaxBytes is the largest event Parse accepts when Parser.MaxBytes is 0.
const DefaultMaxBytes = 1 << 20

// maxNameLen bounds eventType and ids: eventType is the AMQP routing key, an
// AMQP short string of at most 255 bytes, and ids become Kafka keys and
// de-duplication keys, where unbounded values cost memory.
const maxNameLen = 255

// Parser parses and validates events. The zero value is ready to use.
type Parser struct {
	// MaxBytes is the largest event accepted, in bytes. 0 or less means
	// DefaultMaxBytes. It is checked before any decoding, so an oversized
	// event costs nothing but its length.
	MaxBytes int
}

// Parse is Parser{}.Parse.
func Parse(data []byte) (*Event, error) { return Parser{}.Parse(data) }

// Parse decodes one event, in the seed envelope or as CloudEvents structured
// JSON (recognised by a "specversion" key), validates it and fills defaults:
// priority MEDIUM, an empty payload, and a messageId derived from the content
// when the producer sent none.
//
// Every problem found is returned, each as a *FieldError, joined and marked
// permanent (see FieldError).
//
// The event is decoded once, with encoding/json into map[string]any. Numbers
// become float64 rather than json.Number, because rule conditions compare them
// with numeric literals (payload.amount > 1000), which json.Number (a string)
// cannot do. The cost is that integers beyond 2^53 lose precision; producers
// that need exact large ids send them as strings.
func (p Parser) Parse(data []byte) (*Event, error) {
	limit := p.MaxBytes
	if limit <= 0 {
		limit = DefaultMaxBytes
	}
	if len(data) > limit {
		return nil, fail(&FieldError{Reason: fmt.Sprintf("size %d bytes exceeds the limit of %d bytes", len(data), limit)})
	}
	// encoding/json silently replaces invalid UTF-8 with U+FFFD, which would
	// change the content (and the derived id) without telling anyone.
	if !utf8.Valid(data) {
		return nil, fail(&FieldError{Reason: fmt.Sprintf("invalid UTF-8 at byte %d", invalidUTF8At(data))})
	}
	var doc any
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fail(syntaxError(err))
	}
	obj, ok := doc.(map[string]any)
	if !ok {
		return nil, fail(typeError("", doc, "a JSON object"))
	}
	b := builder{ev: new(Event)}
	if _, ok := obj["specversion"]; ok {
		b.cloudEvent(obj)
	} else {
		b.seed(obj)
	}
	return b.finish()
}

// builder fills an Event from a decoded object and collects every problem
// instead of stopping at the first, so a producer fixes them all in one go.
type builder struct {
	ev   *Event
	errs []error
}

func (b *builder) seed(obj map[string]any) {
	b.ev.MessageID = b.id("messageId", obj["messageId"])
	b.ev.EventType = b.eventType("eventType", obj["eventType"])
	b.ev.Timestamp = b.timestamp("timestamp", obj["timestamp"])
	b.ev.Source = b.str("source", obj["source"])
	b.ev.Destination = b.str("destination", obj["destination"])
	b.ev.Priority = b.priority("priority", obj["priority"])
	b.ev.Payload = b.object("payload", obj["payload"])
	b.ev.Metadata = b.object("metadata", obj["metadata"])
}

// cloudEvent maps CloudEvents 1.0 structured JSON onto the envelope: id,
// type, time, source and data are the envelope's messageId, eventType,
// timestamp, source and payload. Of the extension attributes, priority and
// destination fill the fields of the same name, traceid becomes
// metadata.traceId (the correlation id), and every other attribute (subject,
// dataschema, traceparent, ...) is kept in metadata under its own name. When
// there is no traceid, the trace id of a W3C traceparent is used instead.
func (b *builder) cloudEvent(obj map[string]any) {
	switch v := obj["specversion"].(type) {
	case string:
		if v != "1.0" {
			b.add(valueError("specversion", v, `must be "1.0"`))
		}
	default:
		b.add(typeError("specversion", v, `the string "1.0"`))
	}
	b.ev.MessageID = b.id("id", obj["id"])
	b.ev.EventType = b.eventType("type", obj["type"])
	b.ev.Timestamp = b.timestamp("time", obj["time"])
	b.ev.Source = b.str("source", obj["source"])
	b.contentType(obj["datacontenttype"])
	if v := obj["data_base64"]; v != nil {
		b.add(&FieldError{Field: "data_base64", Value: displayJSON(v),
			Reason: `is not supported: send the payload as a JSON object in "data"`})
	}
	b.ev.Payload = b.object("data", obj["data"])

	var meta map[string]any
	var extErrs []error
	for k, v := range obj {
		switch k {
		case "specversion", "id", "type", "time", "source", "datacontenttype", "data", "data_base64":
		case "priority":
			b.ev.Priority = b.priority(k, v)
		case "destination":
			b.ev.Destination = b.str(k, v)
		default:
			switch v.(type) {
			case nil: // CloudEvents: a null attribute is an absent one.
			case string, float64, bool:
				if meta == nil {
					meta = make(map[string]any, len(obj))
				}
				meta[k] = v
			default:
				extErrs = append(extErrs, typeError(k, v, "a string, number or boolean (CloudEvents attribute)"))
			}
		}
	}
	// Map order is random; sorted errors keep the message stable across deliveries.
	slices.SortFunc(extErrs, func(a, b error) int {
		return cmp.Compare(a.(*FieldError).Field, b.(*FieldError).Field)
	})
	b.errs = append(b.errs, extErrs...)
	// traceid (the CloudEvents spelling) is set after the loop so that it
	// wins over a "traceId" attribute whatever the map order.
	if id, ok := meta["traceid"]; ok {
		delete(meta, "traceid")
		meta["traceId"] = id
	}
	if _, ok := meta["traceId"]; !ok {
		if tp, ok := meta["traceparent"].(string); ok {
			if id := traceparentID(tp); id != "" {
				meta["traceId"] = id
			}
		}
	}
	b.ev.Metadata = meta
}

// finish applies defaults, or returns every problem found.
func (b *builder) finish() (*Event, error) {
	// The trace id becomes the correlation id, a header of every task and
	// result: bound it like the ids (a huge AMQP header closes the connection).
	if s, ok := b.ev.Metadata["traceId"].(string); ok {
		b.id("metadata.traceId", s)
	}
	if len(b.errs) > 0 {
		return nil, fail(b.errs...)
	}
	if b.ev.Priority == "" {
		b.ev.Priority = PriorityMedium
	}
	if b.ev.Payload == nil {
		b.ev.Payload = map[string]any{}
	}
	if b.ev.MessageID == "" {
		b.ev.MessageID = deriveID(b.ev)
	}
	return b.ev, nil
}

func (b *builder) add(err error) { b.errs = append(b.errs, err) }

// str returns an optional string field; absent and null give "".
func (b *builder) str(field string, v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	default:
		b.add(typeError(field, v, "a string"))
		return ""
	}
}

// id returns an optional id; "" means "derive one", as for an absent id,
// because some producers send empty strings for unset fields.
func (b *builder) id(field string, v any) string {
	s := b.str(field, v)
	switch {
	case len(s) > maxNameLen:
		b.add(valueError(field, s, fmt.Sprintf("must be at most %d bytes long", maxNameLen)))
	case strings.ContainsFunc(s, unicode.IsControl):
		b.add(valueError(field, s, "must not contain control characters"))
	default:
		return s
	}
	return ""
}

func (b *builder) eventType(field string, v any) string {
	if v == nil {
		b.add(&FieldError{Field: field, Reason: "is required"})
		return ""
	}
	s := b.str(field, v)
	switch {
	case s == "":
		if _, isString := v.(string); isString {
			b.add(&FieldError{Field: field, Reason: "is required"})
		}
	case len(s) > maxNameLen:
		b.add(valueError(field, s, fmt.Sprintf("must be at most %d bytes long", maxNameLen)))
	case strings.ContainsFunc(s, blank):
		b.add(valueError(field, s, "must not contain whitespace or control characters"))
	default:
		return s
	}
	return ""
}

// blank reports runes that have no place in an event type or routing key:
// whitespace, control and other invisible characters.
func blank(r rune) bool { return r == ' ' || !unicode.IsPrint(r) }

func (b *builder) priority(field string, v any) Priority {
	s := b.str(field, v)
	p, err := ParsePriority(s)
	if err != nil {
		b.add(valueError(field, s, "must be HIGH, MEDIUM or LOW"))
	}
	return p
}

func (b *builder) object(field string, v any) map[string]any {
	switch v := v.(type) {
	case nil:
		return nil
	case map[string]any:
		return v
	default:
		b.add(typeError(field, v, "a JSON object"))
		return nil
	}
}

// timeLayouts are tried in order. RFC 3339 (with or without fractional
// seconds) is the standard; the zone-less forms are what Java producers send
// from a LocalDateTime (toString drops zero seconds), read as UTC.
var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999",
	"2006-01-02T15:04",
}

func (b *builder) timestamp(field string, v any) time.Time {
	s := b.str(field, v)
	if s == "" {
		return time.Time{}
	}
	for _, layout := range timeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t
		}
	}
	b.add(valueError(field, s, "must be an RFC 3339 time such as 2025-09-06T10:30:00Z"))
	return time.Time{}
}

// contentType accepts an absent datacontenttype or a JSON media type: data of
// any other type is not a JSON object this pipeline can read.
func (b *builder) contentType(v any) {
	s := b.str("datacontenttype", v)
	if s == "" {
		return
	}
	mt, _, _ := strings.Cut(s, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	if mt == "application/json" || mt == "text/json" || strings.HasSuffix(mt, "+json") {
		return
	}
	b.add(valueError("datacontenttype", s, "must be a JSON media type such as application/json"))
}

// traceparentID returns the trace id of a W3C traceparent header value
// (version-traceid-parentid-flags), or "" when tp is not one.
func traceparentID(tp string) string {
	parts := strings.Split(tp, "-")
	if len(parts) < 4 || len(parts[1]) != 32 || parts[1] == strings.Repeat("0", 32) {
		return ""
	}
	for _, c := range parts[1] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return ""
		}
	}
	return parts[1]
}

// canonical is what a derived id hashes: every field but the id, normalised,
// in a fixed order. encoding/json sorts map keys and prints each float64 one
// way, so the same content always encodes to the same bytes whatever the
// producer's whitespace, key order or number spelling (1200, 1.2e3).
type canonical struct {
	EventType   string         `json:"eventType"`
	Timestamp   string         `json:"timestamp"`
	Source      string         `json:"source"`
	Destination string         `json:"destination"`
	Priority    Priority       `json:"priority"`
	Payload     map[string]any `json:"payload"`
	Metadata    map[string]any `json:"metadata"`
}

// deriveID returns "evt-" and 32 hex digits of a SHA-256 over the event's
// canonical form, so a redelivered event without a messageId keeps its id and
// is still de-duplicated downstream.
func deriveID(e *Event) string {
	c := canonical{
		EventType:   e.EventType,
		Source:      e.Source,
		Destination: e.Destination,
		Priority:    e.Priority,
		Payload:     e.Payload,
	}
	if !e.Timestamp.IsZero() {
		// The same instant in another zone is the same content.
		c.Timestamp = e.Timestamp.UTC().Format(time.RFC3339Nano)
	}
	if len(e.Metadata) > 0 {
		c.Metadata = e.Metadata
	}
	h := sha256.New()
	enc := json.NewEncoder(h)
	enc.SetEscapeHTML(false)
	// Decoded JSON (maps, slices, strings, finite float64s, bools, nil) always
	// encodes, so the error is impossible.
	_ = enc.Encode(c)
	var sum [sha256.Size]byte
	return "evt-" + hex.EncodeToString(h.Sum(sum[:0])[:16])
}

// ParsePriority reads HIGH, MEDIUM or LOW in any case; "" is MEDIUM, the
// default. The error names the value but not a field, so rules and events can
// both put it in their own context.
func ParsePriority(s string) (Priority, error) {
	switch {
	case s == "":
		return PriorityMedium, nil
	case strings.EqualFold(s, string(PriorityHigh)):
		return PriorityHigh, nil
	case strings.EqualFold(s, string(PriorityMedium)):
		return PriorityMedium, nil
	case strings.EqualFold(s, string(PriorityLow)):
		return PriorityLow, nil
	}
	return "", fmt.Errorf("priority must be HIGH, MEDIUM or LOW, got %q", display(s))
}

// Valid reports whether p is HIGH, MEDIUM or LOW.
func (p Priority) Valid() bool {
	return p == PriorityHigh || p == PriorityMedium || p == PriorityLow
}

// Split returns the elements of a batch: data is one JSON object, or a JSON
// array of one or more objects. Each element is returned as is, for Parse;
// the HTTP ingest endpoint uses it to accept both forms. Every element that
// is not an object is reported, with its index as the field ("[2]").
func Split(data []byte) ([]json.RawMessage, error) {
	first := firstByte(data)
	switch first {
	case '{':
		var raw json.RawMessage
		if err := json.Unmarshal(data, &raw); err != nil {
			return nil, fail(syntaxError(err))
		}
		return []json.RawMessage{raw}, nil
	case '[':
		var elems []json.RawMessage
		if err := json.Unmarshal(data, &elems); err != nil {
			return nil, fail(syntaxError(err))
		}
		if len(elems) == 0 {
			return nil, fail(&FieldError{Value: "[]", Reason: "is an empty array: want at least one event"})
		}
		var errs []error
		for i, e := range elems {
			if firstByte(e) != '{' {
				errs = append(errs, &FieldError{Field: fmt.Sprintf("[%d]", i), Value: display(string(e)),
					Reason: "must be a JSON object, got " + rawKind(e)})
			}
		}
		if len(errs) > 0 {
			return nil, fail(errs...)
		}
		return elems, nil
	case 0:
		return nil, fail(&FieldError{Reason: "is empty: want a JSON object or an array of objects"})
	default:
		var v any
		if err := json.Unmarshal(data, &v); err != nil {
			return nil, fail(syntaxError(err))
		}
		return nil, fail(typeError("", v, "a JSON object or an array of objects"))
	}
}

// firstByte returns the first byte after JSON whitespace, or 0.
func firstByte(data []byte) byte {
	for _, c := range data {
		switch c {
		case ' ', '\t', '\n', '\r':
		default:
			return c
		}
	}
	return 0
}

// rawKind names the JSON type of a valid raw value by its first byte.
func rawKind(raw []byte) string {
	switch firstByte(raw) {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	default:
		return "number"
	}
}

// syntaxError reports where the JSON broke. Byte positions in messages count
// from 1, as encoding/json's SyntaxError.Offset does (it is the number of
// bytes read, the bad one included).
func syntaxError(err error) *FieldError {
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		return &FieldError{Reason: fmt.Sprintf("invalid JSON at byte %d: %v", se.Offset, se)}
	}
	return &FieldError{Reason: "invalid JSON: " + err.Error()}
}

// invalidUTF8At returns the position, counting from 1, of the first byte
// that is not valid UTF-8.
func invalidUTF8At(data []byte) int {
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size == 1 {
			return i + 1
		}
		i += size
	}
	return len(data)
}
