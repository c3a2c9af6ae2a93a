package integration_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/eventpipe/eventpipe/api"
	"github.com/eventpipe/eventpipe/config"
)

// With the Kafka cluster gone, POST /api/v1/events answers 503 JSON with
// Retry-After before the server's write timeout, saying no event was
// accepted (before: an empty reply after 31 s, the publish retry limit and
// the write timeout both being 30 s).
func TestEvents_broker_down_answers_503_within_the_deadline(t *testing.T) {
	t.Parallel()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	require.NoError(t, err)
	closed := false
	t.Cleanup(func() {
		if !closed {
			cluster.Close()
		}
	})
	tgt := target{name: "kafka", provider: &provider{kind: "kafka", kafkaBrokers: cluster.ListenAddrs()}, open: openKafka}
	h := newHarness(t, tgt, func(c *config.Config) {
		c.HTTP.WriteTimeout = 3 * time.Second // requests' deadline: 2 s
		c.DataDir = t.TempDir()
	}, nil)
	addr := h.p.Addr(t.Context())
	require.NotEmpty(t, addr)

	cluster.Close()
	closed = true
	start := time.Now()
	res, err := http.Post("http://"+addr+"/api/v1/events", "application/json",
		strings.NewReader(`[`+ev("down-1", "order.created")+`,`+ev("down-2", "order.created")+`]`))
	require.NoError(t, err, "an answer, not an empty reply")
	defer func() { _ = res.Body.Close() }()
	took := time.Since(start)
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
	assert.Equal(t, "5", res.Header.Get("Retry-After"))
	var f api.PublishFailure
	require.NoError(t, json.NewDecoder(res.Body).Decode(&f))
	assert.Zero(t, f.Accepted)
	assert.Equal(t, []int{0, 1}, f.InDoubt, "the chunk under way when the deadline came")
	assert.Contains(t, f.Error, "the request deadline passed before the broker confirmed every event")
	t.Logf("503 after %s (write timeout 3s)", took.Round(time.Millisecond))
}
