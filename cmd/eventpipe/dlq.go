package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/config"
)

// Bounds of what dlq prints per message.
const (
	dlqReasonChars  = 160 // reason in the table, one line
	dlqSnippetBytes = 60  // payload in the table
	dlqJSONSnippet  = 512 // payload in --json
)

// dlqCmd lists and replays poison messages.
func dlqCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: dlq needs a subcommand: list or replay", errUsage)
	}
	switch args[0] {
	case "list":
		return dlqList(ctx, args[1:], stdout)
	case "replay":
		return dlqReplay(ctx, args[1:], stdout, stderr)
	default:
		return fmt.Errorf("%w: unknown dlq subcommand %q", errUsage, args[0])
	}
}

// dlqFlags are the flags list and replay share.
type dlqFlags struct {
	fs     *flag.FlagSet
	config *string
	topics *stringList
	reason *string
}

func newDLQFlags(name string) dlqFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := dlqFlags{fs: fs, topics: &stringList{}}
	f.config = fs.String("config", os.Getenv("EVENTPIPE_CONFIG"), "config file (env EVENTPIPE_CONFIG)")
	fs.Var(f.topics, "topic", "poison topic, or the topic it belongs to (repeatable; default: those of the events and tasks topics)")
	f.reason = fs.String("reason", "", "only messages whose reason or reason_kind contains this text (any case)")
	return f
}

// parse parses args; check validates what the subcommand added.
func (f dlqFlags) parse(args []string, check func() error) error {
	if err := f.fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if f.fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, f.fs.Arg(0))
	}
	if check != nil {
		return check()
	}
	return nil
}

// open loads the config and connects to its broker; close releases it.
func (f dlqFlags) open() (dl broker.DeadLetters, topics []string, cfg *config.Config, release func(), err error) {
	cfg, err = config.Load(*f.config)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if cfg.Broker.Kind == config.BrokerEmbedded {
		// The embedded broker lives in the `eventpipe run` process, whose
		// history keeps its poison messages: ask it over HTTP.
		return remoteDeadLetters{c: newAPIClient(cfg, "")}, poisonTopics(cfg.Topics, *f.topics), cfg, func() {}, nil
	}
	b, err := broker.New(cfg.Broker, cfg.Topics, nil)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("connect %s broker: %w", cfg.Broker.Kind, err)
	}
	dl, ok := b.(broker.DeadLetters)
	if !ok {
		_ = b.Close()
		return nil, nil, nil, nil, fmt.Errorf("the %s broker cannot list or replay poison messages", cfg.Broker.Kind)
	}
	return dl, poisonTopics(cfg.Topics, *f.topics), cfg, func() { _ = b.Close() }, nil
}

// poisonTopics returns the poison topics named (a name without the poison
// suffix is taken as the topic whose poison topic is meant), or by default
// those of the events and tasks topics, which the pipeline's handlers poison.
func poisonTopics(t config.Topics, named []string) []string {
	if len(named) == 0 {
		return []string{t.Poison(t.Events), t.Poison(t.Tasks)}
	}
	out := make([]string, 0, len(named))
	for _, n := range named {
		if !strings.HasSuffix(n, t.PoisonSuffix) {
			n = t.Poison(n)
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// matches reports whether pm's reason or reason kind contains want, any case.
func matches(pm broker.PoisonMessage, want string) bool {
	if want == "" {
		return true
	}
	want = strings.ToLower(want)
	return strings.Contains(strings.ToLower(pm.Reason()), want) || strings.Contains(strings.ToLower(pm.ReasonKind()), want)
}

// origin returns where a replay sends pm: the poison topic's name without
// the suffix, the topic every handler poisons from. The topic_poisoned
// header must agree; it is not trusted on its own, or anyone able to write
// to one poison topic could have a replay inject messages into another
// topic (a forged task, say). A message the broker dead-lettered by itself
// has no topic_poisoned. The string is why not when ok is false.
func origin(pm broker.PoisonMessage, suffix string) (to string, ok bool, why string) {
	if suffix == "" || !strings.HasSuffix(pm.Topic, suffix) || len(pm.Topic) == len(suffix) {
		return "", false, fmt.Sprintf("%s does not end with %q", pm.Topic, suffix)
	}
	to = strings.TrimSuffix(pm.Topic, suffix)
	if o := pm.Origin(); o != "" && o != to {
		return "", false, fmt.Sprintf("its topic_poisoned %q is not %q, the topic %s belongs to", clip(o, 100), to, pm.Topic)
	}
	return to, true, ""
}

// dlqList prints the poison messages waiting, without taking them off.
func dlqList(ctx context.Context, args []string, stdout io.Writer) error {
	f := newDLQFlags("dlq list")
	limit := f.fs.Int("limit", 100, "show at most N messages per topic (0 = all)")
	asJSON := f.fs.Bool("json", false, "print one JSON object per message")
	err := f.parse(args, func() error {
		if *limit < 0 {
			return fmt.Errorf("%w: --limit must be >= 0, got %d", errUsage, *limit)
		}
		return nil
	})
	if err != nil {
		return err
	}
	dl, topics, cfg, closeBroker, err := f.open()
	if err != nil {
		return err
	}
	defer closeBroker()

	table := newDLQTable(stdout)
	var summary []string
	for _, topic := range topics {
		// With --reason the limit counts matching messages, so read them all.
		readLimit := *limit
		if *f.reason != "" {
			readLimit = 0
		}
		msgs, waiting, err := dl.ListPoison(ctx, topic, readLimit)
		if err != nil {
			return fmt.Errorf("list %s: %w", topic, err)
		}
		shown := 0
		for _, pm := range msgs {
			if !matches(pm, *f.reason) || (*limit > 0 && shown >= *limit) {
				continue
			}
			shown++
			if *asJSON {
				if err := writeDLQJSON(stdout, pm, cfg.Topics.PoisonSuffix); err != nil {
					return err
				}
			} else {
				table.row(pm, cfg.Topics.PoisonSuffix)
			}
		}
		summary = append(summary, fmt.Sprintf("%s: %d waiting, %d shown", topic, waiting, shown))
	}
	if *asJSON {
		return nil
	}
	if err := table.flush(); err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, strings.Join(summary, "; "))
	return err
}

// dlqReplay sends poison messages back to the topics they came from.
func dlqReplay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := newDLQFlags("dlq replay")
	dryRun := f.fs.Bool("dry-run", false, "only print what would be replayed")
	if err := f.parse(args, nil); err != nil {
		return err
	}
	dl, topics, cfg, closeBroker, err := f.open()
	if err != nil {
		return err
	}
	defer closeBroker()
	suffix := cfg.Topics.PoisonSuffix
	verb := "replayed"
	if *dryRun {
		verb = "would replay"
	}
	total := 0
	for _, topic := range topics {
		route := func(pm broker.PoisonMessage) (string, bool) {
			if !matches(pm, *f.reason) {
				return "", false
			}
			if n := pm.Message.Metadata.Get(broker.MetaPayloadTruncated); n != "" {
				// Replaying the cut copy would only poison it again as bad JSON.
				fmt.Fprintf(stderr, "skip %s at %s %s: only the start of its %s-byte payload was kept\n",
					pm.Message.UUID, topic, pm.Position, n)
				return "", false
			}
			if keys := pm.Message.Metadata.Get(broker.MetaMetadataTruncated); keys != "" {
				// Its producer's headers were cut or dropped: replayed, it would run without them.
				fmt.Fprintf(stderr, "skip %s at %s %s: metadata %s was cut to fit the broker's size limit\n",
					pm.Message.UUID, topic, pm.Position, clip(keys, dlqReasonChars))
				return "", false
			}
			to, ok, why := origin(pm, suffix)
			if !ok {
				fmt.Fprintf(stderr, "skip %s at %s %s: %s\n", pm.Message.UUID, topic, pm.Position, why)
			}
			return to, ok
		}
		var done []broker.PoisonMessage
		if *dryRun {
			msgs, _, lerr := dl.ListPoison(ctx, topic, 0)
			for _, pm := range msgs {
				if _, ok := route(pm); ok {
					done = append(done, pm)
				}
			}
			err = lerr
		} else {
			done, err = dl.ReplayPoison(ctx, topic, route)
		}
		for _, pm := range done {
			to, _, _ := origin(pm, suffix)
			fmt.Fprintf(stdout, "%s %s from %s to %s (%s: %s)\n", verb, pm.Message.UUID, topic, to,
				orDash(pm.ReasonKind()), clip(oneLineText(pm.Reason()), dlqReasonChars))
		}
		total += len(done)
		if err != nil {
			return fmt.Errorf("replay %s: %w", topic, err)
		}
	}
	fmt.Fprintf(stdout, "%s %d poison messages\n", verb, total)
	return nil
}

// dlqTable prints poison messages as an aligned table.
type dlqTable struct {
	tw   *tabwriter.Writer
	rows int
}

func newDLQTable(w io.Writer) *dlqTable {
	return &dlqTable{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
}

func (t *dlqTable) row(pm broker.PoisonMessage, suffix string) {
	if t.rows == 0 {
		fmt.Fprintln(t.tw, "TOPIC\tPOSITION\tUUID\tKIND\tORIGIN\tHANDLER\tREASON\tPAYLOAD")
	}
	t.rows++
	to, _, _ := origin(pm, suffix)
	fmt.Fprintf(t.tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", pm.Topic, pm.Position, pm.Message.UUID,
		orDash(pm.ReasonKind()), orDash(to), orDash(pm.Handler()),
		clip(oneLineText(pm.Reason()), dlqReasonChars), snippet(pm.Message.Payload, dlqSnippetBytes))
}

func (t *dlqTable) flush() error { return t.tw.Flush() }

// dlqJSON is one poison message in `dlq list --json`.
type dlqJSON struct {
	Topic      string            `json:"topic"`
	Position   string            `json:"position"`
	UUID       string            `json:"uuid"`
	ReasonKind string            `json:"reasonKind"`
	Reason     string            `json:"reason"`
	Origin     string            `json:"origin"`
	Handler    string            `json:"handler"`
	Metadata   map[string]string `json:"metadata"`
	// PayloadBytes is the payload's size; Payload its first bytes (up to
	// 512) as text, with bytes that are not UTF-8 replaced.
	PayloadBytes int    `json:"payloadBytes"`
	Payload      string `json:"payload"`
}

func writeDLQJSON(w io.Writer, pm broker.PoisonMessage, suffix string) error {
	to, _, _ := origin(pm, suffix)
	md := maps.Clone(map[string]string(pm.Message.Metadata))
	for _, k := range broker.PoisonMetadataKeys {
		delete(md, k)
	}
	p := pm.Message.Payload
	if len(p) > dlqJSONSnippet {
		p = p[:dlqJSONSnippet]
	}
	b, err := json.Marshal(dlqJSON{
		Topic: pm.Topic, Position: pm.Position, UUID: pm.Message.UUID, ReasonKind: pm.ReasonKind(),
		Reason: pm.Reason(), Origin: to, Handler: pm.Handler(), Metadata: md,
		PayloadBytes: len(pm.Message.Payload), Payload: strings.ToValidUTF8(string(p), "\uFFFD"),
	})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// snippet quotes the first n bytes of b (escapes keep a table row one line,
// whatever the payload holds) and says how much was cut.
func snippet(b []byte, n int) string {
	if len(b) <= n {
		return strconv.Quote(string(b))
	}
	cut := n
	for cut > 0 && cut < len(b) && !utf8.RuneStart(b[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…(%d bytes)", strconv.Quote(string(b[:cut])), len(b))
}

func oneLineText(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// clip shortens s to at most n runes.
func clip(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	if strings.TrimSpace(v) == "" {
		return errors.New("empty value")
	}
	*l = append(*l, v)
	return nil
}
