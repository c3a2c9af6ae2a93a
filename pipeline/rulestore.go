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
func openRuleStore(cfg *config.Config, log *slog.Logger, m *metrics.Metrics, taskTypes []string,
	changes rulestore.ChangeLog) (*rulestore.Store, error) {
	return rulestore.Open(rulestore.Config{
		Changes: changes,
		Path:    cfg.Rules.File,
		Options: ruleOptions(taskTypes),
		Logger:  log,
		Metrics: m, // a nil *metrics.Metrics counts nothing
	})
}

// ruleOptions are the compile options of every rule set of the pipeline;
// the API's dry runs (api.Deps.RuleOptions) use them too.
func ruleOptions(taskTypes []string) []rules.Option {
	return []rules.Option{rules.WithTaskTypes(taskTypes...)}
}

// watchRules runs the store's file watcher until ctx ends. The returned
// func waits for it to stop, so a shutdown does not leave it polling.
func watchRules(ctx context.Context, s *rulestore.Store) (wait func()) {
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.Watch(ctx) }) // Watch only returns when ctx ends
	return wg.Wait
}
