package deploy_test

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

func TestCompose_sends_eventpipe_traces_to_jaeger(t *testing.T) {
	t.Parallel()
	c := loadCompose(t)
	require.Contains(t, c.Services, "jaeger")
	assert.Contains(t, c.Services["jaeger"].Image, "jaegertracing/")
	env := c.Services["eventpipe"].Environment
	assert.Equal(t, "http://jaeger:4318", env["OTEL_EXPORTER_OTLP_ENDPOINT"], "OTLP/HTTP receiver of the jaeger service")
	assert.Equal(t, "eventpipe", env["OTEL_SERVICE_NAME"])

	data, err := os.ReadFile("grafana/provisioning/datasources/prometheus.yml")
	require.NoError(t, err)
	var prov struct {
		Datasources []struct {
			UID      string `yaml:"uid"`
			Type     string `yaml:"type"`
			URL      string `yaml:"url"`
			JSONData struct {
				Exemplars []struct {
					Name          string `yaml:"name"`
					DatasourceUID string `yaml:"datasourceUid"`
				} `yaml:"exemplarTraceIdDestinations"`
			} `yaml:"jsonData"`
		} `yaml:"datasources"`
	}
	require.NoError(t, yaml.Unmarshal(data, &prov))
	byType := map[string]int{}
	for i, d := range prov.Datasources {
		byType[d.Type] = i
	}
	require.Contains(t, byType, "jaeger")
	require.Contains(t, byType, "prometheus")
	jaeger, prom := prov.Datasources[byType["jaeger"]], prov.Datasources[byType["prometheus"]]
	assert.Equal(t, "http://jaeger:16686", jaeger.URL)
	require.Len(t, prom.JSONData.Exemplars, 1)
	assert.Equal(t, "trace_id", prom.JSONData.Exemplars[0].Name, "the exemplar label eventpipe sets")
	assert.Equal(t, jaeger.UID, prom.JSONData.Exemplars[0].DatasourceUID)
}
