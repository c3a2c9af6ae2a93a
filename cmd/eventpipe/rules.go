package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/rules"
)

func rulesCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: rules needs a subcommand: validate or test", errUsage)
	}
	switch args[0] {
	case "validate":
		return rulesValidate(args[1:], stdout)
	case "test":
		return rulesTest(args[1:], stdout)
	default:
		return fmt.Errorf("%w: unknown rules subcommand %q", errUsage, args[0])
	}
}

// rulesValidate loads and compiles every file and lists every problem found.
func rulesValidate(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("rules validate", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	taskTypes := taskTypesFlag(fs)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	files := fs.Args()
	if len(files) == 0 {
		return fmt.Errorf("%w: rules validate needs at least one FILE", errUsage)
	}
	var errs []error
	for _, f := range files {
		set, err := loadRules(f, *taskTypes)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(stdout, "%s: %d rules OK\n", f, len(set.Rules()))
	}
	return errors.Join(errs...)
}

// taskTypesFlag adds --task-types: executors registered in Go code (e.g.
// pipeline.WithExecutor("email", ...)) that rules may name besides the
// built-in ones; a rule naming any other type is refused, as `run` would.
func taskTypesFlag(fs *flag.FlagSet) *string {
	return fs.String("task-types", "", "comma-separated task types registered in code, besides "+strings.Join(executor.BuiltinTypes(), ", "))
}

// loadRules reads and compiles one rules file; the error lists every problem.
func loadRules(path, extraTaskTypes string) (*rules.Set, error) {
	rs, err := rules.LoadFile(path)
	if err != nil {
		return nil, err
	}
	types := executor.BuiltinTypes()
	for t := range strings.SplitSeq(extraTaskTypes, ",") {
		if t = strings.TrimSpace(t); t != "" {
			types = append(types, t)
		}
	}
	set, err := rules.Compile(rs, rules.WithTaskTypes(types...))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return set, nil
}

// rulesTest shows the tasks the rules would make for one event, and why.
func rulesTest(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("rules test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	rulesFile := fs.String("rules", "", "rules file")
	eventFile := fs.String("event", "", "event JSON file")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	taskTypes := taskTypesFlag(fs)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if *rulesFile == "" || *eventFile == "" {
		return fmt.Errorf("%w: rules test needs --rules FILE and --event FILE", errUsage)
	}
	set, err := loadRules(*rulesFile, *taskTypes)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(*eventFile)
	if err != nil {
		return err
	}
	ev, err := event.Parse(data)
	if err != nil {
		return fmt.Errorf("%s: %w", *eventFile, err)
	}
	report := set.Explain(ev)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(report)
	}
	printReport(stdout, ev, report, set.Rules())
	return nil
}

func printReport(w io.Writer, ev *event.Event, r rules.Report, rs []rules.Rule) {
	conditions := make(map[string]string, len(rs))
	for _, rule := range rs {
		conditions[rule.RuleID] = rule.Condition
	}
	fmt.Fprintf(w, "event %s (%s): %d task(s)\n", ev.MessageID, ev.EventType, len(r.Tasks))
	for _, t := range r.Tasks {
		params, _ := json.Marshal(t.Parameters)
		fmt.Fprintf(w, "  task %s %q type=%s priority=%s rule=%s parameters=%s\n",
			t.TaskID, t.TaskName, t.TaskType, t.Priority, t.RuleID, params)
	}
	fmt.Fprintln(w, "rules:")
	for _, e := range r.Explanations {
		fmt.Fprintf(w, "  %-32s %s\n", e.RuleID, explain(e, conditions[e.RuleID]))
	}
}

// explain says in words why a rule did or did not make a task.
func explain(e rules.Explanation, condition string) string {
	var b strings.Builder
	switch {
	case !e.Enabled:
		b.WriteString("disabled")
	case !e.TypeMatched:
		b.WriteString("event type does not match")
	case e.ConditionResult != nil && !*e.ConditionResult:
		fmt.Fprintf(&b, "condition `%s` is false", condition)
	case e.Error != "":
		b.WriteString("error")
	case e.Task != nil:
		b.WriteString("matched → task " + e.Task.TaskName)
	default:
		b.WriteString("no task")
	}
	if e.Error != "" {
		b.WriteString(": " + e.Error)
	}
	return b.String()
}
