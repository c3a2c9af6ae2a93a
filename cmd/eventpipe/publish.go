package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventpipe/eventpipe/api"
	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/pipeline"
)

// publishBatch is how many events go out in one Publish call or request.
const publishBatch = 500

// maxReported bounds the invalid events listed one by one.
const maxReported = 20

// source is one event of the input with where it came from.
type source struct {
	where string // "line 12", "element 3" or the file name
	raw   json.RawMessage
}

// publishCmd sends events from a file or stdin to the configured broker. On
// the embedded broker (in another process) it posts them to that process's
// HTTP API. Invalid events are reported by line and skipped; the exit code
// is 1 when any event was not sent.
func publishCmd(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("publish", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	path := fs.String("config", os.Getenv("EVENTPIPE_CONFIG"), "config file (env EVENTPIPE_CONFIG)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: publish needs one FILE or - for stdin", errUsage)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	in := stdin
	if name := fs.Arg(0); name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	data, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("read events: %w", err)
	}
	sources, err := splitInput(data)
	if err != nil {
		return err
	}
	sink, err := openSink(cfg)
	if err != nil {
		return err
	}
	defer sink.Close()

	progress := newProgress(stderr, len(sources))
	parser := event.Parser{MaxBytes: cfg.Event.MaxBytes}
	var sent, failed int
	report := func(where string, err error) {
		if failed++; failed <= maxReported {
			fmt.Fprintf(stderr, "%s: %v\n", where, oneLine(err))
		}
	}
	batch := make([]api.Ingested, 0, publishBatch)
	from := make([]string, 0, publishBatch)
	// A batch also stays under half the server's body limit, so large
	// events do not make a request the API refuses with 413.
	budget, size := int(cfg.HTTP.MaxBatchBytes/2), 0
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if err := sink.Send(ctx, batch); err != nil {
			for _, w := range from {
				report(w, err)
			}
		} else {
			sent += len(batch)
		}
		batch, from, size = batch[:0], from[:0], 0
		progress.update(sent + failed)
	}
	for _, s := range sources {
		if ctx.Err() != nil {
			break
		}
		ev, err := parser.Parse(s.raw)
		if err != nil {
			report(s.where, err)
			continue
		}
		if size+len(s.raw) > budget {
			flush()
		}
		batch = append(batch, api.Ingested{ID: ev.MessageID, Raw: s.raw, Event: ev})
		from = append(from, s.where)
		if size += len(s.raw) + 1; len(batch) == publishBatch {
			flush()
		}
	}
	flush()
	progress.done()
	if failed > maxReported {
		fmt.Fprintf(stderr, "... and %d more failed events\n", failed-maxReported)
	}
	elapsed := progress.elapsed()
	fmt.Fprintf(stdout, "sent %d, failed %d, %.0f events/s in %s\n", sent, failed, float64(sent)/max(elapsed.Seconds(), 1e-9), elapsed.Round(time.Millisecond))
	if failed > 0 || sent+failed < len(sources) {
		return fmt.Errorf("%d of %d events not sent", len(sources)-sent, len(sources))
	}
	return nil
}

// splitInput reads one JSON event, a JSON array of events, or JSON lines
// (one event per line; blank lines are skipped). A broken line is kept as
// its own source so it is reported by number while the rest still go out.
func splitInput(data []byte) ([]source, error) {
	trimmed := bytes.TrimSpace(data)
	switch {
	case len(trimmed) == 0:
		return nil, errors.New("no events in the input")
	case trimmed[0] == '[':
		elems, err := event.Split(trimmed)
		if err != nil {
			return nil, fmt.Errorf("input is not a JSON array of events: %w", err)
		}
		out := make([]source, len(elems))
		for i, e := range elems {
			out[i] = source{where: fmt.Sprintf("element %d", i), raw: e}
		}
		return out, nil
	case json.Valid(trimmed):
		// One JSON value, maybe pretty-printed; JSON lines never parse as one.
		return []source{{where: "event", raw: trimmed}}, nil
	}
	var out []source
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), len(data)+1)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		out = append(out, source{where: fmt.Sprintf("line %d", n), raw: append(json.RawMessage(nil), line...)})
	}
	return out, sc.Err()
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

// sink is where publish sends events.
type sink interface {
	Send(ctx context.Context, events []api.Ingested) error
	Close() error
}

func openSink(cfg *config.Config) (sink, error) {
	if cfg.Broker.Kind == config.BrokerEmbedded {
		// The embedded broker lives inside the running pipeline process.
		return &httpSink{url: "http://" + cfg.HTTP.Addr + "/api/v1/events", token: clientToken(cfg.HTTP),
			client: &http.Client{Timeout: 30 * time.Second}}, nil
	}
	b, err := broker.New(cfg.Broker, cfg.Topics, nil)
	if err != nil {
		return nil, fmt.Errorf("connect %s broker: %w", cfg.Broker.Kind, err)
	}
	return &brokerSink{b: b, topic: cfg.Topics.Events}, nil
}

// clientToken is the token publish presents: http.token, else the first
// of http.tokens by name.
func clientToken(h config.HTTP) string {
	if h.Token != "" || len(h.Tokens) == 0 {
		return h.Token
	}
	names := slices.Sorted(maps.Keys(h.Tokens))
	return h.Tokens[names[0]]
}

type brokerSink struct {
	b     broker.Broker
	topic string
}

func (s *brokerSink) Send(ctx context.Context, events []api.Ingested) error {
	msgs := make([]*message.Message, len(events))
	for i, e := range events {
		msgs[i] = pipeline.EventMessage(ctx, e)
	}
	return s.b.Publisher().Publish(s.topic, msgs...)
}

func (s *brokerSink) Close() error { return s.b.Close() }

type httpSink struct {
	url, token string
	client     *http.Client
}

func (s *httpSink) Send(ctx context.Context, events []api.Ingested) error {
	var body bytes.Buffer
	body.WriteByte('[')
	for i, e := range events {
		if i > 0 {
			body.WriteByte(',')
		}
		body.Write(e.Raw)
	}
	body.WriteByte(']')
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, &body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("post events (is `eventpipe run` serving on %s?): %w", strings.TrimSuffix(s.url, "/api/v1/events"), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("post events: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

func (s *httpSink) Close() error { return nil }

// progress draws a bar on a terminal and nothing elsewhere.
type progress struct {
	w        io.Writer
	tty      bool
	total    int
	start    time.Time
	lastDraw time.Time
}

func newProgress(w io.Writer, total int) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progress{w: w, tty: tty, total: total, start: time.Now()}
}

func (p *progress) update(n int) {
	if !p.tty || time.Since(p.lastDraw) < 100*time.Millisecond && n < p.total {
		return
	}
	p.lastDraw = time.Now()
	const width = 30
	filled := width * n / max(p.total, 1)
	rate := float64(n) / max(time.Since(p.start).Seconds(), 1e-9)
	fmt.Fprintf(p.w, "\r[%s%s] %3d%% %d/%d %.0f events/s", strings.Repeat("=", filled), strings.Repeat(" ", width-filled),
		100*n/max(p.total, 1), n, p.total, rate)
}

func (p *progress) done() {
	if p.tty {
		fmt.Fprintln(p.w)
	}
}

func (p *progress) elapsed() time.Duration { return time.Since(p.start) }
