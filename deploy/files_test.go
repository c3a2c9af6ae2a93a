package deploy_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

// Paths of the files under test, relative to this package's directory (go
// test runs in it).
const (
	alertsFile    = "prometheus/alerts.yml"
	recordingFile = "prometheus/recording.yml"
	ruleTestsFile = "prometheus/tests.yml"
	promConfig    = "prometheus/prometheus.yml"
	dashboardFile = "grafana/dashboard.json"
	composeFile   = "docker-compose.yml"
	dockerfile    = "Dockerfile"
)

// ruleFile is a Prometheus rule file (the fields the tests read).
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Record      string            `yaml:"record"`
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// loadRules returns every rule of the rule file at path.
func loadRules(t *testing.T, path string) []rule {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var f ruleFile
	require.NoError(t, yaml.Unmarshal(data, &f), "parse %s", path)
	var rules []rule
	for _, g := range f.Groups {
		rules = append(rules, g.Rules...)
	}
	require.NotEmpty(t, rules, "%s has no rules", path)
	return rules
}

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	UID    string  `json:"uid"`
	Title  string  `json:"title"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource json.RawMessage          `json:"datasource"`
	GridPos    struct{ H, W, X, Y int } `json:"gridPos"`
	Targets    []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

// loadDashboard returns the dashboard and all its panels, rows' children included.
func loadDashboard(t *testing.T) (dashboard, []panel) {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	require.NoError(t, err)
	var d dashboard
	require.NoError(t, json.Unmarshal(data, &d), "parse %s", dashboardFile)
	var all []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			all = append(all, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	require.NotEmpty(t, all, "%s has no panels", dashboardFile)
	return d, all
}

// usedExpr is one PromQL expression and the file and rule or panel it is in.
type usedExpr struct {
	where, expr string
}

// expressions returns every PromQL expression of the rule files and the
// dashboard, and the names the recording rules define.
func expressions(t *testing.T) (exprs []usedExpr, recorded []string) {
	t.Helper()
	for _, path := range []string{alertsFile, recordingFile} {
		for _, r := range loadRules(t, path) {
			if r.Record != "" {
				recorded = append(recorded, r.Record)
			}
			exprs = append(exprs, usedExpr{where: filepath.Join(path, r.Record+r.Alert), expr: r.Expr})
		}
	}
	_, panels := loadDashboard(t)
	for _, p := range panels {
		for _, target := range p.Targets {
			exprs = append(exprs, usedExpr{where: dashboardFile + ` panel "` + p.Title + `" ` + target.RefID, expr: target.Expr})
		}
	}
	return exprs, recorded
}

// usedFamilies maps every metric family the expressions select (recording
// rule outputs excluded) to where it is used.
func usedFamilies(t *testing.T) map[string][]string {
	t.Helper()
	exprs, recorded := expressions(t)
	used := map[string][]string{}
	for _, e := range exprs {
		names, err := metricNames(e.expr)
		require.NoError(t, err, e.where)
		for _, n := range names {
			if slices.Contains(recorded, n) {
				continue
			}
			used[metricFamily(n)] = append(used[metricFamily(n)], e.where)
		}
	}
	return used
}
