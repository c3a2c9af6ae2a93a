package config

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestUnknownEnv_names_the_closest_known_variable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		environ []string
		want    []string
	}{
		{name: "misspelt token", environ: []string{"PATH=/bin", "EVENTPIPE_API_TOKN=secret"},
			want: []string{"unknown environment variable EVENTPIPE_API_TOKN is ignored; did you mean EVENTPIPE_API_TOKEN?"}},
		{name: "misspelt broker", environ: []string{"EVENTPIPE_BROKR=kafka"},
			want: []string{"unknown environment variable EVENTPIPE_BROKR is ignored; did you mean EVENTPIPE_BROKER?"}},
		{name: "known ones", environ: []string{"EVENTPIPE_API_TOKEN=x", "EVENTPIPE_CONFIG=/c.yaml", "EVENTPIPE_DATA_DIR=/d"}},
		{name: "other prefixes", environ: []string{"EVENTPIPEX=1", "HOME=/root"}},
		{name: "test suites' variables", environ: []string{"EVENTPIPE_TEST_AMQP_URL=amqp://x", "EVENTPIPE_TEST_KAFKA_BROKERS=h:9092"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, UnknownEnv(tt.environ))
		})
	}
}
