package integration_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/config"
)

func TestExampleBrokerConfigs_load(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		file string
		kind string
	}{
		{name: "kafka", file: "../config/kafka.yaml", kind: config.BrokerKafka},
		{name: "amqp", file: "../config/amqp.yaml", kind: config.BrokerAMQP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := config.Load(tt.file)
			require.NoError(t, err)
			assert.Equal(t, tt.kind, cfg.Broker.Kind)
		})
	}
}
