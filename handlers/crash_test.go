package handlers_test

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	wmw "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/crashmark"
	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/handlers"
	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/task"
)

// An event that was being evaluated when the process stopped is poisoned
// on its next delivery, without being evaluated again, with a reason that
// says so; the message carries the event's correlation id for the log line.
func TestTrigger_poisons_an_event_that_stopped_the_process(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	before, err := crashmark.Open(dir)
	require.NoError(t, err)
	require.NoError(t, before.Mark("e1")) // the process dies during e1

	marks, err := crashmark.Open(dir)
	require.NoError(t, err)
	evaluated := 0
	tr := &handlers.Trigger{Rules: matcherFunc(func(*event.Event) ([]task.Task, error) {
		evaluated++
		return nil, nil
	}), Crashes: marks, Publisher: &recorder{}, TasksTopic: "tasks", Logger: quiet}

	msg := message.NewMessage("m", []byte(goodEvent))
	err = tr.Handle(msg)
	require.Error(t, err)
	assert.True(t, permanent.Is(err))
	var be *rules.BudgetError
	require.ErrorAs(t, err, &be)
	assert.Contains(t, err.Error(), "evaluation budget exceeded for event e1: the process stopped (crash or kill) while evaluating")
	assert.Zero(t, evaluated)
	assert.Equal(t, "tr-1", wmw.MessageCorrelationID(msg))

	require.NoError(t, tr.Handle(message.NewMessage("m", []byte(goodEvent))), "a replay is evaluated")
	assert.Equal(t, 1, evaluated)
}
