package crashmark_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/crashmark"
)

// A mark left by a process that stopped mid-evaluation is found by the next
// one, once; a mark that was removed is not.
func TestDir_finds_a_mark_left_by_a_previous_process_once(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first, err := crashmark.Open(dir)
	require.NoError(t, err)
	require.NoError(t, first.Mark("killer"))
	require.NoError(t, first.Mark("finished"))
	first.Unmark("finished")
	assert.False(t, first.Crashed("killer"), "a mark of this process is no evidence of a crash")

	// The process dies here; the next one starts on the same directory.
	next, err := crashmark.Open(dir)
	require.NoError(t, err)
	assert.Equal(t, 1, next.Left())
	assert.False(t, next.Crashed("finished"))
	assert.True(t, next.Crashed("killer"))
	assert.False(t, next.Crashed("killer"), "the evidence is used once: a replay after a fix is evaluated")

	again, err := crashmark.Open(dir)
	require.NoError(t, err)
	assert.Equal(t, 0, again.Left(), "and removed from disk")
}
