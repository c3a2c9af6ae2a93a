package pipeline

import (
	"context"
	"log/slog"
	"sync"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/metrics"
	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/rulestore"
)

// openRuleStore loads cfg.Rules.File into the store that owns the rule set
// from then on: the rules API changes it, the file watcher reloads it, and
// its Engine is the one the trigger handler matches with. Rules are compiled
// against taskTypes, the executor registry's names, so a rule for an unknown
// executor is refused at load, reload and API time alike. Without a file the
// store works in memory and says so in the log.
func openRuleStore(cfg *config.Config, log *slog.Logger, m *metrics.Metrics, opts []rules.Option,
	changes rulestore.ChangeLog) (*rulestore.Store, error) {
	return rulestore.Open(rulestore.Config{
		Changes:      changes,
		Path:         cfg.Rules.File,
		MaxFileBytes: cfg.Rules.MaxFileBytes,
		Options:      opts,
		Logger:       log,
		Metrics:      m, // a nil *metrics.Metrics counts nothing
	})
}

// ruleOptions are the compile options of every rule set of the pipeline;
// the API's dry runs (api.Deps.RuleOptions) use them too, so the rules
// file, the rules API and dry runs accept the same rules and share one
// evaluation gate.
func ruleOptions(cfg *config.Config, taskTypes []string, gate *rules.Gate) []rules.Option {
	return []rules.Option{rules.WithTaskTypes(taskTypes...), rules.WithBudget(ruleBudget(cfg)), rules.WithGate(gate)}
}

// ruleBudget maps rules.budget and event.max_bytes onto rules.Budget,
// which owns the defaults and checks.
func ruleBudget(cfg *config.Config) rules.Budget {
	b := cfg.Rules.Budget
	budget := rules.Budget{
		MaxEventBytes:         cfg.Event.MaxBytes,
		ConditionMemory:       b.ConditionMemory,
		ConditionTime:         b.ConditionTime,
		EventTime:             b.EventTime,
		MaxRegexpProgram:      b.MaxRegexpProgram,
		MaxRules:              b.MaxRules,
		ConcurrentEvaluations: b.ConcurrentEvaluations,
	}
	budget.SetDefaults()
	return budget
}

// watchRules runs the store's file watcher until ctx ends. The returned
// func waits for it to stop, so a shutdown does not leave it polling.
func watchRules(ctx context.Context, s *rulestore.Store) (wait func()) {
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.Watch(ctx) }) // Watch only returns when ctx ends
	return wg.Wait
}
