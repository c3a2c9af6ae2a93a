package progress

import (
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTracker_stalled_only_with_a_backlog_and_no_progress(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		backlog Backlog
		handled bool
		later   time.Duration
		want    string
	}{
		{name: "no_backlog_long_idle", backlog: Backlog{"events": 0}, later: time.Hour},
		{name: "backlog_but_recent_start", backlog: Backlog{"events": 5}, later: time.Second},
		{name: "backlog_and_idle", backlog: Backlog{"events": 5}, later: 3 * time.Minute,
			want: "not consuming (readiness.stall_timeout 2m0s): events has 5 messages waiting and its handler trigger took none for 3m0s"},
		{name: "backlog_other_topic", backlog: Backlog{"other": 5}, later: time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tr := NewTracker()
			h := tr.Middleware("trigger", "events")(func(*message.Message) ([]*message.Message, error) { return nil, nil })
			_, err := h(message.NewMessage("1", nil))
			require.NoError(t, err)
			base := time.Now()
			tr.now = func() time.Time { return base.Add(tt.later) }
			err = tr.Stalled(tt.backlog, DefaultStallTimeout)
			if tt.want == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Equal(t, tt.want, err.Error())
		})
	}
}
