package permanent_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/eventpipe/eventpipe/permanent"
)

func TestIs(t *testing.T) {
	t.Parallel()
	base := errors.New("boom")
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{name: "nil", err: nil, want: false},
		{name: "plain", err: base, want: false},
		{name: "wrapped", err: permanent.Wrap(base), want: true},
		{name: "wrapped_then_fmt_wrapped", err: fmt.Errorf("ctx: %w", permanent.Wrap(base)), want: true},
		{name: "joined", err: errors.Join(base, permanent.Wrap(base)), want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, permanent.Is(tt.err))
		})
	}
}

func TestWrap_keeps_message_and_chain(t *testing.T) {
	t.Parallel()
	base := errors.New("boom")
	err := permanent.Wrap(base)
	assert.Equal(t, "boom", err.Error())
	assert.ErrorIs(t, err, base)
	assert.Nil(t, permanent.Wrap(nil))
	assert.Same(t, err, permanent.Wrap(err), "double wrap is a no-op")
}
