// Package progress tells whether the process consumes: when each handler
// last took or finished a message, combined with the broker's backlog and
// partition assignment, decides readiness. A consumer that is connected but
// takes nothing (a stuck consumer group, topics lost after a broker
// restart) is not ready, however healthy its connection looks.
package progress

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// DefaultStallTimeout is how long a handler with a backlog may take no
// message before the process is not ready.
const DefaultStallTimeout = 2 * time.Minute

// AssignmentReporter is a broker that can tell which subscribed topics have
// no partition (or queue consumer) assigned to this process right now. A
// broker implements it optionally; the Kafka broker's consumer group does
// (a topic with no partitions after a rebalance or a broker restart).
// Unassigned returns the topics of this process that have none.
type AssignmentReporter interface {
	Unassigned(ctx context.Context) ([]string, error)
}

// Backlog is the number of messages waiting on a topic, summed over its
// partitions.
type Backlog map[string]int64

// Tracker records the progress of every handler. It is safe for concurrent
// use; recording is two atomic stores per message.
type Tracker struct {
	start time.Time
	now   func() time.Time
	mu    sync.Mutex
	// topics maps a topic to the handlers consuming it.
	topics map[string][]*handler
}

type handler struct {
	name string
	// last is the Unix nanosecond time a message was last taken or
	// finished; inFlight counts messages being handled.
	last     atomic.Int64
	inFlight atomic.Int64
}

// NewTracker returns a tracker; progress is counted from now.
func NewTracker() *Tracker {
	return &Tracker{start: time.Now(), now: time.Now, topics: map[string][]*handler{}}
}

// Middleware records the progress of the handler name consuming topic.
// Put it outermost: it must see every message, however it ends.
func (t *Tracker) Middleware(name, topic string) message.HandlerMiddleware {
	h := &handler{name: name}
	h.last.Store(t.start.UnixNano())
	t.mu.Lock()
	t.topics[topic] = append(t.topics[topic], h)
	t.mu.Unlock()
	return func(next message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			h.inFlight.Add(1)
			h.last.Store(time.Now().UnixNano())
			defer func() {
				h.last.Store(time.Now().UnixNano())
				h.inFlight.Add(-1)
			}()
			return next(msg)
		}
	}
}

// Stalled returns an error naming every topic that has messages waiting in
// backlog while none of its handlers took or finished one for longer than
// stallAfter; nil when every topic with a backlog is progressing.
func (t *Tracker) Stalled(backlog Backlog, stallAfter time.Duration) error {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	var stuck []string
	for topic, hs := range t.topics {
		waiting := backlog[topic]
		if waiting <= 0 || len(hs) == 0 {
			continue
		}
		var last int64
		for _, h := range hs {
			last = max(last, h.last.Load())
		}
		if idle := now.Sub(time.Unix(0, last)); idle > stallAfter {
			stuck = append(stuck, fmt.Sprintf("%s has %d messages waiting and its handler %s took none for %s",
				topic, waiting, hs[0].name, idle.Round(100*time.Millisecond)))
		}
	}
	if len(stuck) == 0 {
		return nil
	}
	sort.Strings(stuck)
	return fmt.Errorf("not consuming (readiness.stall_timeout %s): %s", stallAfter, strings.Join(stuck, "; "))
}
