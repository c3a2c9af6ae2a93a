package api

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/eventpipe/eventpipe/broker"
)

// DeadLetters lists and replays poison messages; the Kafka and AMQP
// brokers are one, and on the embedded broker the history keeps them.
type DeadLetters = broker.DeadLetters

// PoisonItem is one poison message in GET /api/v1/dlq.
type PoisonItem struct {
	Position   string            `json:"position"`
	UUID       string            `json:"uuid"`
	ReasonKind string            `json:"reasonKind"`
	Reason     string            `json:"reason"`
	Origin     string            `json:"origin"`
	Handler    string            `json:"handler"`
	Metadata   map[string]string `json:"metadata"`
	// Payload is the message's bytes (base64 in JSON).
	Payload []byte `json:"payload"`
}

// PoisonTopic is one poison topic in GET /api/v1/dlq.
type PoisonTopic struct {
	Topic   string       `json:"topic"`
	Waiting int          `json:"waiting"`
	Items   []PoisonItem `json:"items"`
}

// PoisonList is the answer of GET /api/v1/dlq.
type PoisonList struct {
	Topics []PoisonTopic `json:"topics"`
}

// ReplayRequest is the body of POST /api/v1/dlq/replay: the positions (from
// GET /api/v1/dlq) of the messages of one poison topic to send back.
type ReplayRequest struct {
	Topic     string   `json:"topic"`
	Positions []string `json:"positions"`
}

// ReplayResult is the answer of POST /api/v1/dlq/replay.
type ReplayResult struct {
	Replayed []PoisonItem `json:"replayed"`
	// Skipped names each requested position not replayed, and why.
	Skipped []FieldDetail `json:"skipped"`
}

// maxPoisonList bounds the messages listed per topic.
const maxPoisonList = 1000

func (s *Server) withDeadLetters(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.deps.DeadLetters == nil {
			writeError(w, http.StatusNotImplemented, "poison messages cannot be listed here: "+
				"on the embedded broker, turn history on (history.store) to keep them")
			return
		}
		h(w, r)
	}
}

// handleListPoison answers the poison messages waiting, oldest first, for
// ?topic= (repeatable; a poison topic or the topic it belongs to; default
// those of the events and tasks topics), at most ?limit= (default 100, up
// to 1000) per topic. Nothing is taken off the topics.
func (s *Server) handleListPoison(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if raw := r.URL.Query().Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > maxPoisonList {
			writeError(w, http.StatusBadRequest, "invalid query parameters", FieldDetail{Field: "limit", Value: truncate(raw, 64),
				Error: fmt.Sprintf("limit must be a whole number from 1 to %d", maxPoisonList)})
			return
		}
		limit = n
	}
	topics, bad := s.poisonTopics(r.URL.Query()["topic"])
	if bad != nil {
		writeError(w, http.StatusBadRequest, "invalid query parameters", *bad)
		return
	}
	out := PoisonList{Topics: []PoisonTopic{}}
	for _, topic := range topics {
		msgs, waiting, err := s.deps.DeadLetters.ListPoison(r.Context(), topic, limit)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("list %s: %v", topic, err))
			return
		}
		pt := PoisonTopic{Topic: topic, Waiting: waiting, Items: make([]PoisonItem, 0, len(msgs))}
		for _, pm := range msgs {
			pt.Items = append(pt.Items, s.poisonItem(pm))
		}
		out.Topics = append(out.Topics, pt)
	}
	writeJSON(w, http.StatusOK, out)
}

// handleReplayPoison sends the chosen messages of one poison topic back to
// the topic it belongs to (its name without the poison suffix; a message
// whose topic_poisoned says otherwise is skipped, so a header cannot steer
// a replay elsewhere), then removes them from the poison topic.
func (s *Server) handleReplayPoison(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readJSONBody(w, r)
	if !ok {
		return
	}
	var req ReplayRequest
	if err := decodeStrict(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid request body: "+err.Error())
		return
	}
	topics, bad := s.poisonTopics([]string{req.Topic})
	switch {
	case req.Topic == "":
		writeError(w, http.StatusBadRequest, "invalid request body", FieldDetail{Field: "topic", Error: `"topic" is required`})
		return
	case bad != nil:
		writeError(w, http.StatusBadRequest, "invalid request body", *bad)
		return
	case len(req.Positions) == 0:
		writeError(w, http.StatusBadRequest, "invalid request body",
			FieldDetail{Field: "positions", Error: `"positions" must list the positions to replay`})
		return
	}
	topic := topics[0]
	to := strings.TrimSuffix(topic, s.deps.PoisonSuffix)
	want := map[string]bool{}
	for _, p := range req.Positions {
		want[p] = true
	}
	res := ReplayResult{Replayed: []PoisonItem{}, Skipped: []FieldDetail{}}
	done, err := s.deps.DeadLetters.ReplayPoison(r.Context(), topic, func(pm broker.PoisonMessage) (string, bool) {
		if !want[pm.Position] {
			return "", false
		}
		delete(want, pm.Position)
		if o := pm.Origin(); o != "" && o != to {
			res.Skipped = append(res.Skipped, FieldDetail{Field: "positions", Value: pm.Position,
				Error: fmt.Sprintf("its topic_poisoned %q is not %q, the topic %s belongs to", truncate(o, 100), to, topic)})
			return "", false
		}
		return to, true
	})
	for _, pm := range done {
		res.Replayed = append(res.Replayed, s.poisonItem(pm))
	}
	for _, p := range slices.Sorted(maps.Keys(want)) {
		res.Skipped = append(res.Skipped, FieldDetail{Field: "positions", Value: truncate(p, 64), Error: "no such message waiting"})
	}
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("replay %s: %v (replayed %d before)", topic, err, len(done)))
		return
	}
	s.log.InfoContext(r.Context(), "poison messages replayed", "topic", topic, "to", to, "replayed", len(done),
		"actor", tokenName(r.Context()))
	writeJSON(w, http.StatusOK, res)
}

// poisonTopics resolves names to the configured poison topics: a name
// without the suffix means the topic's poison topic. Only poison topics
// of the pipeline's own topics are served.
func (s *Server) poisonTopics(named []string) ([]string, *FieldDetail) {
	if len(named) == 0 || (len(named) == 1 && named[0] == "") {
		return s.deps.PoisonTopics, nil
	}
	var out []string
	for _, n := range named {
		t := n
		if !strings.HasSuffix(t, s.deps.PoisonSuffix) {
			t += s.deps.PoisonSuffix
		}
		if !slices.Contains(s.deps.PoisonTopics, t) {
			return nil, &FieldDetail{Field: "topic", Value: truncate(n, 140),
				Error: "topic must be one of " + strings.Join(s.deps.PoisonTopics, ", ")}
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out, nil
}

func (s *Server) poisonItem(pm broker.PoisonMessage) PoisonItem {
	md := maps.Clone(map[string]string(pm.Message.Metadata))
	for _, k := range broker.PoisonMetadataKeys {
		delete(md, k)
	}
	if md == nil {
		md = map[string]string{}
	}
	return PoisonItem{Position: pm.Position, UUID: pm.Message.UUID, ReasonKind: pm.ReasonKind(), Reason: pm.Reason(),
		Origin: pm.Origin(), Handler: pm.Handler(), Metadata: md, Payload: pm.Message.Payload}
}
