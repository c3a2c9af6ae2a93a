package pipeline_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/pipeline"
)

// rules.budget applies to the rules file at start as to the rules API: a
// condition over the default budget is refused, and accepted under a
// raised one.
func TestNew_applies_rules_budget_to_the_rules_file(t *testing.T) {
	t.Parallel()
	const slow = "taskTriggerRules:\n  - ruleId: slow\n    eventType: x\n    taskType: log\n" +
		"    condition: 'payload.s matches \"(x|xx){30}y\"'\n"
	tests := []struct {
		name   string
		budget config.RulesBudget
		want   string
	}{
		{name: "default", want: `rule "slow": condition: 1:1: on an event of 1.0 MiB this condition may allocate`},
		{name: "raised", budget: config.RulesBudget{ConditionTime: 10 * time.Second, EventTime: 20 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			cfg := config.Default()
			cfg.Rules.File = filepath.Join(dir, "rules.yaml")
			cfg.Rules.Budget = tt.budget
			cfg.DataDir = dir
			cfg.HTTP.Addr = "127.0.0.1:0"
			require.NoError(t, os.WriteFile(cfg.Rules.File, []byte(slow), 0o600))
			p, err := pipeline.New(cfg)
			if tt.want != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.want)
				return
			}
			require.NoError(t, err)
			require.NoError(t, p.Close())
		})
	}
}
