package deploy_test

import (
	"bufio"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

func TestAlerts_keep_the_seed_alerts_with_severity_and_annotations(t *testing.T) {
	t.Parallel()
	byName := map[string]rule{}
	for _, r := range loadRules(t, alertsFile) {
		if r.Alert != "" {
			byName[r.Alert] = r
		}
	}
	tests := []struct {
		name     string
		severity string
		metric   string // the metric the alert is about
	}{
		{name: "HighMessageErrorRate", severity: "critical", metric: "message_errors_total"},
		{name: "HighQueueBacklog", severity: "warning", metric: "queue_backlog"},
		{name: "LowProcessingRate", severity: "warning", metric: "message_processed_total"},
		{name: "HighProcessingLatency", severity: "warning", metric: "message_processing_time_seconds_bucket"},
		{name: "EventpipeDown", severity: "critical", metric: "up"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, ok := byName[tt.name]
			require.True(t, ok, "alert %s missing from %s", tt.name, alertsFile)
			assert.Equal(t, tt.severity, r.Labels["severity"])
			assert.NotEmpty(t, r.For, "a for: duration keeps a blip from paging")
			assert.NotEmpty(t, r.Annotations["summary"])
			assert.NotEmpty(t, r.Annotations["description"])
			names, err := metricNames(r.Expr)
			require.NoError(t, err)
			assert.Contains(t, names, tt.metric)
		})
	}
}

func TestRecording_defines_task_trigger_success_rate_over_the_trigger_handler(t *testing.T) {
	t.Parallel()
	rules := loadRules(t, recordingFile)
	i := slices.IndexFunc(rules, func(r rule) bool { return r.Record == "task_trigger_success_rate" })
	require.GreaterOrEqual(t, i, 0, "task_trigger_success_rate missing from %s", recordingFile)
	expr := rules[i].Expr
	for _, want := range []string{`message_processed_total{handler="trigger"}`, `message_errors_total{handler="trigger"}`} {
		assert.Contains(t, expr, want)
	}
}

// TestPromtool_checks_and_unit_tests_pass runs promtool when it is installed
// (Debian: apt-get install prometheus); CI also runs it directly.
func TestPromtool_checks_and_unit_tests_pass(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt-get install -y prometheus); rules unchecked here")
	}
	tests := []struct {
		name string
		args []string
	}{
		{name: "check rules", args: []string{"check", "rules", alertsFile, recordingFile}},
		{name: "test rules", args: []string{"test", "rules", ruleTestsFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, err := exec.CommandContext(t.Context(), promtool, tt.args...).CombinedOutput()
			assert.NoError(t, err, "promtool %s:\n%s", strings.Join(tt.args, " "), out)
		})
	}
}

func TestDashboard_has_the_seed_and_task_panels_with_queries(t *testing.T) {
	t.Parallel()
	d, panels := loadDashboard(t)
	assert.NotEmpty(t, d.UID, "a fixed uid keeps links stable across provisioning")
	titles := map[string]panel{}
	ids := map[int]bool{}
	for _, p := range panels {
		assert.False(t, ids[p.ID], "panel id %d used twice", p.ID)
		ids[p.ID] = true
		assert.LessOrEqual(t, p.GridPos.X+p.GridPos.W, 24, "panel %q wider than the grid", p.Title)
		titles[p.Title] = p
		if p.Type == "row" {
			continue
		}
		assert.JSONEq(t, `{"type":"prometheus","uid":"${datasource}"}`, string(p.Datasource),
			"panel %q must use the $datasource variable", p.Title)
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		refs := map[string]bool{}
		for _, target := range p.Targets {
			assert.NotEmpty(t, target.Expr, "panel %q target %s", p.Title, target.RefID)
			assert.False(t, refs[target.RefID], "panel %q: refId %s twice", p.Title, target.RefID)
			refs[target.RefID] = true
		}
	}
	for _, want := range []string{
		"Message throughput", "Error rate", "Processing latency p50 / p95 / p99", "Queue backlog",
		"Tasks triggered by rule", "Tasks executed by type and status", "Task execution duration p95",
		"Retries and poisoned messages",
	} {
		assert.Contains(t, titles, want)
	}
}

// compose is the part of a compose file the tests read.
type compose struct {
	Services map[string]struct {
		Image string `yaml:"image"`
		Build *struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		} `yaml:"build"`
		Environment map[string]string `yaml:"environment"`
		Volumes     []string          `yaml:"volumes"`
		Ports       []string          `yaml:"ports"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

func loadCompose(t *testing.T) compose {
	t.Helper()
	data, err := os.ReadFile(composeFile)
	require.NoError(t, err)
	var c compose
	require.NoError(t, yaml.Unmarshal(data, &c), "parse %s", composeFile)
	return c
}

// mounts maps each bind mount's container path to its host path (relative
// to deploy/); named volumes are left out.
func mounts(t *testing.T, volumes []string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, v := range volumes {
		parts := strings.Split(v, ":")
		require.GreaterOrEqual(t, len(parts), 2, "volume %q", v)
		if strings.HasPrefix(parts[0], ".") || strings.HasPrefix(parts[0], "/") {
			m[parts[1]] = parts[0]
		}
	}
	return m
}

func TestCompose_runs_the_whole_stack_from_files_that_exist(t *testing.T) {
	t.Parallel()
	c := loadCompose(t)
	for _, name := range []string{"kafka", "rabbitmq", "prometheus", "grafana", "eventpipe"} {
		require.Contains(t, c.Services, name)
	}

	t.Run("every bind mount exists", func(t *testing.T) {
		t.Parallel()
		for name, s := range c.Services {
			for target, source := range mounts(t, s.Volumes) {
				_, err := os.Stat(source)
				assert.NoError(t, err, "service %s mounts %s at %s", name, source, target)
			}
		}
	})
	t.Run("every named volume is declared", func(t *testing.T) {
		t.Parallel()
		for name, s := range c.Services {
			for _, v := range s.Volumes {
				src, _, _ := strings.Cut(v, ":")
				if !strings.HasPrefix(src, ".") && !strings.HasPrefix(src, "/") {
					assert.Contains(t, c.Volumes, src, "service %s", name)
				}
			}
		}
	})
	t.Run("published ports bind to loopback only", func(t *testing.T) {
		t.Parallel()
		for name, s := range c.Services {
			for _, p := range s.Ports {
				assert.True(t, strings.HasPrefix(p, "127.0.0.1:"), "service %s publishes %q on every interface", name, p)
			}
		}
	})
	t.Run("kafka runs in KRaft mode", func(t *testing.T) {
		t.Parallel()
		env := c.Services["kafka"].Environment
		assert.Contains(t, env["KAFKA_PROCESS_ROLES"], "controller")
		assert.NotEmpty(t, env["KAFKA_CONTROLLER_QUORUM_VOTERS"])
		assert.NotContains(t, c.Services, "zookeeper")
	})
	t.Run("rabbitmq has the management plugin", func(t *testing.T) {
		t.Parallel()
		assert.Contains(t, c.Services["rabbitmq"].Image, "management")
	})
	t.Run("eventpipe is built from the Dockerfile and configured by env", func(t *testing.T) {
		t.Parallel()
		s := c.Services["eventpipe"]
		require.NotNil(t, s.Build)
		_, err := os.Stat(filepath.Join(s.Build.Context, s.Build.Dockerfile))
		assert.NoError(t, err)
		assert.Equal(t, "${EVENTPIPE_BROKER:-kafka}", s.Environment["EVENTPIPE_BROKER"])
		assert.Contains(t, s.Environment["EVENTPIPE_KAFKA_BROKERS"], "kafka:")
		assert.Contains(t, s.Environment["EVENTPIPE_AMQP_URL"], "@rabbitmq:")
		assert.NotEmpty(t, s.Environment["EVENTPIPE_API_TOKEN"], "a non-loopback listener needs a token")
	})
	t.Run("prometheus loads our rule files and scrapes eventpipe", func(t *testing.T) {
		t.Parallel()
		m := mounts(t, c.Services["prometheus"].Volumes)
		configSource, ok := m["/etc/prometheus/prometheus.yml"]
		require.True(t, ok, "prometheus.yml not mounted")
		data, err := os.ReadFile(configSource)
		require.NoError(t, err)
		var cfg struct {
			RuleFiles     []string `yaml:"rule_files"`
			ScrapeConfigs []struct {
				JobName       string `yaml:"job_name"`
				StaticConfigs []struct {
					Targets []string `yaml:"targets"`
				} `yaml:"static_configs"`
			} `yaml:"scrape_configs"`
		}
		require.NoError(t, yaml.Unmarshal(data, &cfg))
		var loaded []string
		for _, rf := range cfg.RuleFiles {
			source, ok := m[rf]
			if assert.True(t, ok, "rule file %s is not mounted into the container", rf) {
				loaded = append(loaded, path.Clean(source))
			}
		}
		assert.ElementsMatch(t, []string{alertsFile, recordingFile}, loaded)
		require.Len(t, cfg.ScrapeConfigs, 1)
		assert.Equal(t, "eventpipe", cfg.ScrapeConfigs[0].JobName, "EventpipeDown selects job=\"eventpipe\"")
		assert.Equal(t, []string{"eventpipe:8080"}, cfg.ScrapeConfigs[0].StaticConfigs[0].Targets)
	})
	t.Run("grafana gets the datasource and the dashboard", func(t *testing.T) {
		t.Parallel()
		m := mounts(t, c.Services["grafana"].Volumes)
		assert.Equal(t, "./grafana/provisioning/datasources", m["/etc/grafana/provisioning/datasources"])
		assert.Equal(t, "./grafana/provisioning/dashboards", m["/etc/grafana/provisioning/dashboards"])
		var dashTarget string
		for target, source := range m {
			if path.Clean(source) == dashboardFile {
				dashTarget = target
			}
		}
		require.NotEmpty(t, dashTarget, "dashboard.json not mounted")
		data, err := os.ReadFile("grafana/provisioning/dashboards/eventpipe.yml")
		require.NoError(t, err)
		var prov struct {
			Providers []struct {
				Options struct {
					Path string `yaml:"path"`
				} `yaml:"options"`
			} `yaml:"providers"`
		}
		require.NoError(t, yaml.Unmarshal(data, &prov))
		require.Len(t, prov.Providers, 1)
		assert.Equal(t, prov.Providers[0].Options.Path, path.Dir(dashTarget), "the provider must read the mounted dashboard's folder")
	})
}

func TestDockerfile_builds_a_static_binary_into_a_non_root_image(t *testing.T) {
	t.Parallel()
	f, err := os.Open(dockerfile)
	require.NoError(t, err)
	defer f.Close()
	var froms, users, copies []string
	var cgoOff bool
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch word, rest, _ := strings.Cut(line, " "); strings.ToUpper(word) {
		case "FROM":
			froms = append(froms, rest)
		case "USER":
			users = append(users, rest)
		case "COPY":
			copies = append(copies, rest)
		}
		cgoOff = cgoOff || strings.Contains(line, "CGO_ENABLED=0")
	}
	require.NoError(t, sc.Err())
	require.Len(t, froms, 2, "multi-stage: build and run")
	assert.Regexp(t, regexp.MustCompile(`^golang:1\.26\b.* AS build$`), froms[0])
	assert.Regexp(t, regexp.MustCompile(`^(gcr\.io/distroless/static|scratch)`), froms[1])
	assert.True(t, cgoOff, "CGO_ENABLED=0 makes the binary static")
	require.NotEmpty(t, users)
	assert.NotRegexp(t, regexp.MustCompile(`^(root|0)(:|$)`), users[len(users)-1], "the final user must not be root")
	joined := strings.Join(copies, "\n")
	assert.Contains(t, joined, "config/")
	assert.Contains(t, joined, "examples/")
}
