package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/eventpipe/eventpipe/api"
	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/history"
)

// historyFlags are the flags trace and tasks share.
type historyFlags struct {
	fs     *flag.FlagSet
	config *string
	server *string
	asJSON *bool
}

func newHistoryFlags(name, usageLine string, stdout io.Writer) historyFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(stdout, "usage: %s\n\nAsks the running `eventpipe run` (http.addr, with http.token) what its history holds.\n\nflags:\n", usageLine)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		fmt.Fprintln(stdout, "\nenvironment: EVENTPIPE_CONFIG, EVENTPIPE_HTTP_ADDR, EVENTPIPE_API_TOKEN")
	}
	return historyFlags{
		fs:     fs,
		config: fs.String("config", os.Getenv("EVENTPIPE_CONFIG"), "config file (env EVENTPIPE_CONFIG)"),
		server: fs.String("server", "", "base URL of the eventpipe HTTP server (default http://<http.addr>)"),
		asJSON: fs.Bool("json", false, "print JSON instead of a table"),
	}
}

// parse parses args; errHelp means --help was printed.
func (f historyFlags) parse(args []string) error {
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			f.fs.Usage()
			return errHelp
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return nil
}

// errHelp: --help was asked for and printed (exit 0).
var errHelp = errors.New("help printed")

func (f historyFlags) client() (*apiClient, error) {
	cfg, err := config.Load(*f.config)
	if err != nil {
		return nil, err
	}
	return newAPIClient(cfg, *f.server), nil
}

// traceCmd prints what happened to one event: the rules of its type and
// what each did, its tasks, their retries and results.
func traceCmd(ctx context.Context, args []string, stdout io.Writer) error {
	f := newHistoryFlags("trace", "eventpipe trace [--config FILE] [--server URL] [--json] EVENT_ID", stdout)
	if err := f.parse(args); err != nil {
		return err
	}
	if f.fs.NArg() != 1 {
		return fmt.Errorf("%w: trace needs one EVENT_ID, got %d arguments", errUsage, f.fs.NArg())
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	id := f.fs.Arg(0)
	var ev history.Event
	if err := c.do(ctx, http.MethodGet, "/api/v1/events/"+url.PathEscape(id), nil, nil, &ev); err != nil {
		return fmt.Errorf("trace %s: %w", id, err)
	}
	if *f.asJSON {
		return writeJSONLine(stdout, ev)
	}
	return printTrace(stdout, &ev)
}

func printTrace(w io.Writer, ev *history.Event) error {
	fmt.Fprintf(w, "event %s  type %s", ev.EventID, orDash(ev.EventType))
	if ev.Source != "" {
		fmt.Fprintf(w, "  source %s", ev.Source)
	}
	fmt.Fprintf(w, "  correlation %s\n", orDash(ev.CorrelationID))
	if !ev.ReceivedAt.IsZero() {
		fmt.Fprintf(w, "received %s, handled %d time(s)\n", ev.ReceivedAt.Format(time.RFC3339Nano), ev.Deliveries)
	} else {
		fmt.Fprintln(w, "the event's own record is not in the history (dropped or pruned); its tasks are:")
	}
	if ev.Error != "" {
		fmt.Fprintf(w, "error: %s\n", oneLineText(ev.Error))
	}
	if len(ev.Rules) > 0 || ev.MoreRules > 0 {
		fmt.Fprintln(w, "\nrules of its type:")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "RULE\tVERSION\tENABLED\tCONDITION\tTASK\tERROR")
		for _, r := range ev.Rules {
			cond := "-"
			if r.ConditionResult != nil {
				cond = strconv.FormatBool(*r.ConditionResult)
			}
			fmt.Fprintf(tw, "%s\t%d\t%t\t%s\t%s\t%s\n", r.RuleID, r.Version, r.Enabled, cond, orDash(r.TaskID),
				clip(oneLineText(r.Error), 120))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if ev.MoreRules > 0 {
			fmt.Fprintf(w, "(%d more rules of this type not recorded)\n", ev.MoreRules)
		}
	} else if !ev.ReceivedAt.IsZero() {
		fmt.Fprintln(w, "\nno rule has this event type")
	}
	if len(ev.Tasks) == 0 {
		fmt.Fprintln(w, "\nno tasks")
		return nil
	}
	fmt.Fprintln(w, "\ntasks:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TASK\tRULE\tTYPE\tSTATUS\tATTEMPTS\tDURATION\tERROR / OUTPUT")
	for _, t := range ev.Tasks {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", t.TaskID, t.RuleID, t.TaskType, taskStatus(t), t.Attempts,
			duration(t), clip(oneLineText(detail(t)), 160))
		for _, r := range t.Retries {
			fmt.Fprintf(tw, "\t\t\t  retry %d\t\t%dms\t%s\n", r.Attempt, r.DurationMs, clip(oneLineText(r.Error), 160))
		}
	}
	return tw.Flush()
}

func taskStatus(t history.Task) string {
	if t.PoisonKind != "" {
		return t.Status + " (poisoned: " + t.PoisonKind + ")"
	}
	return t.Status
}

func duration(t history.Task) string {
	if t.FinishedAt == nil {
		return "-"
	}
	return strconv.FormatInt(t.DurationMs, 10) + "ms"
}

func detail(t history.Task) string {
	if t.Error != "" {
		return t.Error
	}
	return t.Output
}

// tasksCmd lists tasks from the history, newest first.
func tasksCmd(ctx context.Context, args []string, stdout io.Writer) error {
	f := newHistoryFlags("tasks", "eventpipe tasks [--status S] [--rule R] [--event-type T] [--since D] [--until D] [--limit N] [--json]", stdout)
	status := f.fs.String("status", "", "only tasks in this status: PENDING, RETRYING, SUCCEEDED, FAILED")
	rule := f.fs.String("rule", "", "only tasks of this rule id")
	eventType := f.fs.String("event-type", "", "only tasks of events of this type")
	since := f.fs.String("since", "24h", "only tasks made since: a duration back from now (1h) or an RFC 3339 time")
	until := f.fs.String("until", "", "only tasks made before: a duration back from now or an RFC 3339 time")
	limit := f.fs.Int("limit", 50, "show at most N tasks (0 = all)")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, f.fs.Arg(0))
	}
	if *limit < 0 {
		return fmt.Errorf("%w: --limit must be >= 0, got %d", errUsage, *limit)
	}
	now := time.Now()
	for name, v := range map[string]string{"--since": *since, "--until": *until} {
		if v == "" {
			continue
		}
		if _, err := api.ParseSince(v, now); err != nil {
			return fmt.Errorf("%w: %s %q %v", errUsage, name, v, err)
		}
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	q := url.Values{}
	for k, v := range map[string]string{"status": strings.ToUpper(*status), "ruleId": *rule, "eventType": *eventType,
		"since": *since, "until": *until} {
		if v != "" {
			q.Set(k, v)
		}
	}
	var all []history.Task
	for {
		q.Set("limit", strconv.Itoa(pageSize(*limit, len(all))))
		var page history.TaskPage
		if err := c.do(ctx, http.MethodGet, "/api/v1/tasks", q, nil, &page); err != nil {
			return fmt.Errorf("list tasks: %w", err)
		}
		all = append(all, page.Items...)
		if page.Next == "" || (*limit > 0 && len(all) >= *limit) {
			break
		}
		q.Set("cursor", page.Next)
	}
	if *f.asJSON {
		for _, t := range all {
			if err := writeJSONLine(stdout, t); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CREATED\tTASK\tRULE\tEVENT\tTYPE\tSTATUS\tATTEMPTS\tDURATION\tERROR / OUTPUT")
	for _, t := range all {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", t.CreatedAt.Format(time.RFC3339), t.TaskID, t.RuleID,
			t.EventID, t.TaskType, taskStatus(t), t.Attempts, duration(t), clip(oneLineText(detail(t)), 100))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%d tasks\n", len(all))
	return err
}

// pageSize asks for what is still wanted, at most a full page.
func pageSize(limit, have int) int {
	if limit == 0 {
		return history.MaxTaskPage
	}
	return min(limit-have, history.MaxTaskPage)
}

func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
