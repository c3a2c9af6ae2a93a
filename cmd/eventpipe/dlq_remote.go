package main

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventpipe/eventpipe/api"
	"github.com/eventpipe/eventpipe/broker"
)

// remoteDeadLetters lists and replays the poison messages of the embedded
// broker through the running `eventpipe run`, whose history keeps them
// (GET /api/v1/dlq, POST /api/v1/dlq/replay). It implements broker.DeadLetters.
type remoteDeadLetters struct {
	c *apiClient
}

// remoteListMax is the most messages the server lists per topic.
const remoteListMax = 1000

// ListPoison implements broker.DeadLetters; limit 0 lists up to remoteListMax.
func (d remoteDeadLetters) ListPoison(ctx context.Context, topic string, limit int) ([]broker.PoisonMessage, int, error) {
	if limit <= 0 || limit > remoteListMax {
		limit = remoteListMax
	}
	var out api.PoisonList
	q := url.Values{"topic": {topic}, "limit": {strconv.Itoa(limit)}}
	if err := d.c.do(ctx, http.MethodGet, "/api/v1/dlq", q, nil, &out); err != nil {
		return nil, 0, err
	}
	var msgs []broker.PoisonMessage
	waiting := 0
	for _, t := range out.Topics {
		waiting += t.Waiting
		for _, it := range t.Items {
			msgs = append(msgs, poisonMessageOf(t.Topic, it))
		}
	}
	return msgs, waiting, nil
}

// ReplayPoison implements broker.DeadLetters: route picks here, the server
// replays (and checks each origin again).
func (d remoteDeadLetters) ReplayPoison(ctx context.Context, topic string,
	route func(broker.PoisonMessage) (string, bool)) ([]broker.PoisonMessage, error) {
	msgs, _, err := d.ListPoison(ctx, topic, 0)
	if err != nil {
		return nil, err
	}
	byPos := map[string]broker.PoisonMessage{}
	var positions []string
	for _, pm := range msgs {
		if _, ok := route(pm); ok {
			positions = append(positions, pm.Position)
			byPos[pm.Position] = pm
		}
	}
	if len(positions) == 0 {
		return nil, nil
	}
	var res api.ReplayResult
	if err := d.c.do(ctx, http.MethodPost, "/api/v1/dlq/replay", nil,
		api.ReplayRequest{Topic: topic, Positions: positions}, &res); err != nil {
		return nil, err
	}
	done := make([]broker.PoisonMessage, 0, len(res.Replayed))
	for _, it := range res.Replayed {
		done = append(done, byPos[it.Position])
	}
	return done, nil
}

// poisonMessageOf rebuilds a poison message from its API form.
func poisonMessageOf(topic string, it api.PoisonItem) broker.PoisonMessage {
	m := message.NewMessage(it.UUID, it.Payload)
	for k, v := range it.Metadata {
		m.Metadata.Set(k, v)
	}
	for k, v := range map[string]string{broker.MetaReasonPoisoned: it.Reason, broker.MetaTopicPoisoned: it.Origin,
		broker.MetaHandlerPoisoned: it.Handler, broker.MetaReasonKind: it.ReasonKind} {
		if v != "" {
			m.Metadata.Set(k, v)
		}
	}
	return broker.PoisonMessage{Topic: topic, Position: it.Position, Message: m}
}
