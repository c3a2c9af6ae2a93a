package pipeline

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventpipe/eventpipe/api"
	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/history"
	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/rulestore"
)

// historyConfig maps the history section onto the history package's
// config, which owns the defaults and checks; the SQLite file lives in
// the data directory.
func historyConfig(cfg *config.Config) history.Config {
	h := cfg.History
	hc := history.Config{
		Store:           h.Store,
		PostgresURL:     h.PostgresURL,
		QueueSize:       h.QueueSize,
		BatchSize:       h.BatchSize,
		FlushInterval:   h.FlushInterval,
		MaxAge:          h.Retention.MaxAge,
		MaxEvents:       h.Retention.MaxEvents,
		PruneInterval:   h.Retention.PruneInterval,
		MaxPayloadBytes: h.MaxPayloadBytes,
	}
	if h.Store == history.StoreSQLite && cfg.DataDir != "" {
		hc.Path = filepath.Join(cfg.DataDir, history.DefaultFile)
	}
	return hc
}

// historyOpenTimeout bounds connecting to the history store at start-up.
const historyOpenTimeout = 15 * time.Second

// openHistory opens the history store and starts its recorder, when
// history.store names one; both nil otherwise. The recorder is stopped and
// the store closed by Pipeline.Close, after the router has drained.
func (p *Pipeline) openHistory() error {
	hc := historyConfig(p.cfg)
	if !hc.Enabled() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), historyOpenTimeout)
	defer cancel()
	store, err := history.Open(ctx, hc)
	if err != nil {
		return err
	}
	rec, err := history.NewRecorder(store, p.registry, p.log.With("component", "history"))
	if err != nil {
		_ = store.Close()
		return fmt.Errorf("history recorder: %w", err)
	}
	p.history, p.recorder = store, rec
	p.closers = append(p.closers, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), historyCloseTimeout)
		defer cancel()
		err := rec.Close(ctx)
		if cerr := store.Close(); err == nil {
			err = cerr
		}
		return err
	})
	p.log.Info("history on", "store", hc.Store, "where", historyWhere(hc))
	return nil
}

// historyCloseTimeout bounds writing the queued history at shutdown.
const historyCloseTimeout = 10 * time.Second

func historyWhere(hc history.Config) string {
	if hc.Store == history.StoreSQLite {
		return hc.Path
	}
	return "postgres"
}

// recordLoadedRules puts the rules the store loaded into the rule history
// (action "load") unless their version is there already, so every active
// version can be rolled back to.
func (p *Pipeline) recordLoadedRules() {
	if p.history == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), historyOpenTimeout)
	defer cancel()
	all, _ := p.rules.List(0, 1<<30)
	err := p.history.RecordLoadedRules(ctx, all, func(r rules.Rule) rulestore.ChangeRecord {
		return rulestore.ChangeRecord{RuleID: r.RuleID, Version: r.Version, Action: "load", Actor: "file",
			At: r.UpdatedAt, Rule: &r}
	})
	if err != nil {
		p.log.Error("rules not recorded in the rule history", "error", err)
	}
}

// eventHistory records trigger outcomes with the rule set they were
// matched against. It reads the engine's set just after the handler's
// Match did: a rule change landing between the two makes the recorded
// explanation use the newer set (each outcome names the rule version).
type eventHistory struct {
	rec    *history.Recorder
	engine *rules.Engine
}

// RecordEvent implements handlers.EventHistory.
func (h eventHistory) RecordEvent(o history.EventOutcome) {
	o.Rules = h.engine.Set()
	h.rec.RecordEvent(o)
}

// poisonKeeperRetry is how long the poison keeper waits before a message
// it could not store is delivered again (GoChannel redelivers at once).
const poisonKeeperRetry = time.Second

// addPoisonKeeper subscribes, on the embedded broker, to the poison topics
// of the events and tasks topics and keeps every poison message in the
// history, where `dlq list`/`replay` and the console find it. The message
// is acked only once stored.
func (p *Pipeline) addPoisonKeeper(router *message.Router) error {
	if p.history == nil || p.cfg.Broker.Kind != config.BrokerEmbedded {
		return nil
	}
	for _, origin := range []string{p.cfg.Topics.Events, p.cfg.Topics.Tasks} {
		topic := p.cfg.Topics.Poison(origin)
		sub, err := p.broker.Subscriber(topic)
		if err != nil {
			return fmt.Errorf("subscribe poison keeper to %s: %w", topic, err)
		}
		router.AddConsumerHandler("poison-keeper-"+origin, topic, sub, func(msg *message.Message) error {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(msg.Context()), historyOpenTimeout)
			defer cancel()
			if err := p.history.AddPoison(ctx, topic, msg.UUID, msg.Payload, msg.Metadata); err != nil {
				p.log.Error("poison message not kept; retrying", "topic", topic, "message_uuid", msg.UUID, "error", err)
				time.Sleep(poisonKeeperRetry)
				return err
			}
			return nil
		})
	}
	return nil
}

// historyDeadLetters lists and replays the poison messages the history
// keeps for the embedded broker; it implements broker.DeadLetters.
type historyDeadLetters struct {
	store *history.Store
	pub   message.Publisher
}

// ListPoison implements broker.DeadLetters.
func (d historyDeadLetters) ListPoison(ctx context.Context, topic string, limit int) ([]broker.PoisonMessage, int, error) {
	kept, waiting, err := d.store.ListPoison(ctx, topic, limit)
	if err != nil {
		return nil, 0, err
	}
	out := make([]broker.PoisonMessage, len(kept))
	for i, k := range kept {
		m := message.NewMessage(k.UUID, k.Payload)
		for key, v := range k.Metadata {
			m.Metadata.Set(key, v)
		}
		out[i] = broker.PoisonMessage{Topic: topic, Position: strconv.FormatInt(k.ID, 10), Message: m}
	}
	return out, waiting, nil
}

// ReplayPoison implements broker.DeadLetters: each message route accepts
// is published back and then removed from the history.
func (d historyDeadLetters) ReplayPoison(ctx context.Context, topic string,
	route func(broker.PoisonMessage) (string, bool)) ([]broker.PoisonMessage, error) {
	msgs, _, err := d.ListPoison(ctx, topic, 0)
	if err != nil {
		return nil, err
	}
	var done []broker.PoisonMessage
	for _, pm := range msgs {
		to, ok := route(pm)
		if !ok {
			continue
		}
		if err := d.pub.Publish(to, broker.ReplayMessage(pm)); err != nil {
			return done, fmt.Errorf("publish %s to %s: %w", pm.Message.UUID, to, err)
		}
		id, _ := strconv.ParseInt(pm.Position, 10, 64)
		if err := d.store.DeletePoison(ctx, id); err != nil {
			return done, err
		}
		done = append(done, pm)
	}
	return done, nil
}

// apiDeps are the HTTP server's collaborators. The DLQ endpoints serve the
// broker's poison topics when it can list them (Kafka, AMQP), and on the
// embedded broker the poison messages the history keeps.
func (p *Pipeline) apiDeps() api.Deps {
	d := api.Deps{Events: p, TracerProvider: p.tracedHTTP(), Gatherer: p.registry, Readiness: api.ReadinessFunc(p.Ready), Logger: p.log,
		Rules: p.rules, RuleOptions: p.ruleOpts,
		PoisonTopics: []string{p.cfg.Topics.Poison(p.cfg.Topics.Events), p.cfg.Topics.Poison(p.cfg.Topics.Tasks)},
		PoisonSuffix: p.cfg.Topics.PoisonSuffix}
	if p.history != nil {
		d.History = p.history
	}
	if dl, ok := p.broker.(broker.DeadLetters); ok {
		d.DeadLetters = dl
	} else if p.history != nil && p.cfg.Broker.Kind == config.BrokerEmbedded {
		d.DeadLetters = historyDeadLetters{store: p.history, pub: p.broker.Publisher()}
	}
	return d
}

// History returns the history store, nil when history.store is none.
func (p *Pipeline) History() *history.Store { return p.history }

// FlushHistory waits until everything recorded so far is in the history
// store (or dropped), or ctx ends; nil at once when history is off.
func (p *Pipeline) FlushHistory(ctx context.Context) error { return p.recorder.Flush(ctx) }
