package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/pipeline"
	"github.com/eventpipe/eventpipe/progress"
)

// A trigger handler that takes nothing while events wait makes /readyz
// fail after readiness.stall_timeout, and ready again once it consumes.
func TestPipeline_not_ready_while_a_subscription_is_stuck(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	stuck := func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			if message.SubscribeTopicFromCtx(msg.Context()) == "business-events" {
				<-release
			}
			return h(msg)
		}
	}
	h := newHarnessWith(t, func(c *config.Config) { c.Readiness.StallTimeout = 300 * time.Millisecond },
		nil, pipeline.WithMiddleware(stuck))
	ready := func() error {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		return h.p.Ready(ctx)
	}
	require.NoError(t, ready(), "ready before anything waits")
	for i := range 3 {
		h.publish(ev(fmt.Sprintf("stuck-%d", i), "order.created"))
	}
	require.Eventually(t, func() bool { return ready() != nil }, 5*time.Second, 20*time.Millisecond)
	err := ready()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not consuming (readiness.stall_timeout 300ms): business-events has")
	assert.Contains(t, err.Error(), "messages waiting and its handler trigger took none for")
	res, err := http.Get("http://" + h.p.Addr(t.Context()) + "/readyz")
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	_ = res.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode, "body: %s", body)
	assert.Contains(t, string(body), "not consuming")

	close(release)
	require.Eventually(t, func() bool { return ready() == nil }, 5*time.Second, 20*time.Millisecond,
		"ready again once the backlog is consumed")
}

// unassigned is a broker that says some topics have no partition here, as
// a Kafka consumer group member left without assignment would.
type unassigned struct {
	*broker.Embedded
	topics []string
}

func (u unassigned) Unassigned(context.Context) ([]string, error) { return u.topics, nil }

var _ progress.AssignmentReporter = unassigned{}

func TestPipeline_not_ready_while_a_topic_has_no_assignment(t *testing.T) {
	t.Parallel()
	b := broker.NewEmbedded(config.EmbeddedBroker{BufferSize: 16}, watermill.NopLogger{})
	t.Cleanup(func() { _ = b.Close() })
	h := newHarnessWith(t, nil, nil, pipeline.WithBroker(unassigned{Embedded: b, topics: []string{"business-events"}}))
	err := h.p.Ready(t.Context())
	require.Error(t, err)
	assert.EqualError(t, err, "no partition assigned to this process for business-events")
}

// failingBacklog is a broker whose backlog cannot be read, as Kafka's after
// its topics were lost in a restart.
type failingBacklog struct{ *broker.Embedded }

func (failingBacklog) Backlog(context.Context) ([]broker.Backlog, error) {
	return nil, errors.New("unknown topic or partition")
}

func TestPipeline_not_ready_while_the_backlog_cannot_be_read(t *testing.T) {
	t.Parallel()
	b := broker.NewEmbedded(config.EmbeddedBroker{BufferSize: 16}, watermill.NopLogger{})
	t.Cleanup(func() { _ = b.Close() })
	h := newHarnessWith(t, func(c *config.Config) { c.Readiness.StallTimeout = 200 * time.Millisecond },
		nil, pipeline.WithBroker(failingBacklog{b}))
	require.Eventually(t, func() bool { return h.p.Ready(t.Context()) != nil }, 5*time.Second, 20*time.Millisecond)
	err := h.p.Ready(t.Context())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "the broker's backlog cannot be read since")
	assert.Contains(t, err.Error(), "unknown topic or partition")
}
