package broker

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func rec(offset int64, key string) *kafkaRecord { return &kafkaRecord{offset: offset, key: key} }

func TestPartitionWork_holds_a_key_back_while_its_record_runs(t *testing.T) {
	t.Parallel()
	p := newPartitionWork("t", 0)
	a1, b1, a2, none := rec(10, "a"), rec(11, "b"), rec(12, "a"), rec(13, "")
	assert.Equal(t, recordRunnable, p.add(a1))
	assert.Equal(t, recordRunnable, p.add(b1), "another key runs alongside")
	assert.Equal(t, recordWaiting, p.add(a2), "a's second record waits for its first")
	assert.Equal(t, recordRunnable, p.add(none), "a record without a key waits for nothing")
	assert.Nil(t, p.finish(b1))
	assert.Same(t, a2, p.finish(a1), "a's next record may run once its first finished")
	assert.Nil(t, p.finish(a2))
	assert.Empty(t, p.blocked, "no key stays blocked")
}

func TestPartitionWork_commits_below_the_lowest_unfinished_record(t *testing.T) {
	t.Parallel()
	p := newPartitionWork("t", 0)
	_, _, ok := p.commitPoint()
	assert.False(t, ok, "nothing to commit before a record was fetched")
	rs := []*kafkaRecord{rec(5, "a"), rec(6, "b"), rec(7, "c"), rec(8, "d"), rec(9, "e")}
	for _, r := range rs {
		require.Equal(t, recordRunnable, p.add(r))
	}
	p.finish(rs[1])
	p.finish(rs[3])
	p.finish(rs[4])
	off, _, ok := p.commitPoint()
	require.True(t, ok)
	assert.EqualValues(t, 5, off, "offset 5 still runs")
	assert.Equal(t, "eventpipe-done:v1:1,3-4", p.doneAbove(off))
	p.finish(rs[0])
	off, _, _ = p.commitPoint()
	assert.EqualValues(t, 7, off, "5 and 6 done, 7 runs")
	assert.Equal(t, "eventpipe-done:v1:1-2", p.doneAbove(off))
	p.finish(rs[2])
	off, _, _ = p.commitPoint()
	assert.EqualValues(t, 10, off, "all done: resume after the last")
	assert.Empty(t, p.doneAbove(off))
	assert.Zero(t, len(p.window)-p.head, "no record kept")
}

func TestPartitionWork_skips_records_its_commit_metadata_lists_as_done(t *testing.T) {
	t.Parallel()
	before := newPartitionWork("t", 0)
	rs := []*kafkaRecord{rec(100, "a"), rec(101, "b"), rec(102, "a"), rec(103, "c")}
	for _, r := range rs {
		before.add(r)
	}
	before.finish(rs[1])
	before.finish(rs[3])
	base, _, _ := before.commitPoint()
	meta := before.doneAbove(base)

	after := newPartitionWork("t", 0)
	after.skip = parseDoneAbove(meta, base)
	var run []int64
	for _, r := range []*kafkaRecord{rec(100, "a"), rec(101, "b"), rec(102, "a"), rec(103, "c"), rec(104, "b")} {
		if after.add(r) != recordDone {
			run = append(run, r.offset)
		}
	}
	assert.Equal(t, []int64{100, 102, 104}, run, "101 and 103 finished before the restart")
	off, _, _ := after.commitPoint()
	assert.EqualValues(t, 100, off)
}

func TestParseDoneAbove_refuses_what_it_did_not_write(t *testing.T) {
	t.Parallel()
	for _, meta := range []string{"", "member-1", "eventpipe-done:v1:", "eventpipe-done:v1:0", "eventpipe-done:v1:5-2",
		"eventpipe-done:v1:x", "eventpipe-done:v1:1-999999999"} {
		assert.Nil(t, parseDoneAbove(meta, 10), meta)
	}
	assert.Equal(t, map[int64]bool{11: true, 13: true, 14: true}, parseDoneAbove("eventpipe-done:v1:1,3-4", 10))
}

func TestPartitionWork_done_metadata_stays_under_the_commit_metadata_limit(t *testing.T) {
	t.Parallel()
	p := newPartitionWork("t", 0)
	for i := range int64(4000) {
		r := rec(i, "")
		p.add(r)
		if i%2 == 1 {
			p.finish(r) // every other record done: one range each
		}
	}
	meta := p.doneAbove(0)
	assert.LessOrEqual(t, len(meta), doneMetadataMaxBytes)
	assert.NotNil(t, parseDoneAbove(meta, 0))
}
