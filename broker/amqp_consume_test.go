package broker

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
)

// ackRecorder is an amqpAckChannel that records the frames and keeps
// RabbitMQ's view: the outstanding tags, and an error for a frame naming a
// tag that is not outstanding (the channel would close).
type ackRecorder struct {
	mu          sync.Mutex
	frames      []string
	outstanding map[uint64]bool
	errs        []string
}

func newAckRecorder(tags uint64) *ackRecorder {
	r := &ackRecorder{outstanding: map[uint64]bool{}}
	for t := uint64(1); t <= tags; t++ {
		r.outstanding[t] = true
	}
	return r
}

func (r *ackRecorder) Ack(tag uint64, multiple bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.frames = append(r.frames, fmt.Sprintf("ack %d multiple=%t", tag, multiple))
	if !r.outstanding[tag] {
		r.errs = append(r.errs, fmt.Sprintf("ack of unknown tag %d", tag))
	}
	for t := range r.outstanding {
		if t == tag || (multiple && t < tag) {
			delete(r.outstanding, t)
		}
	}
	return nil
}

func (r *ackRecorder) Nack(tag uint64, multiple, requeue bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.frames = append(r.frames, fmt.Sprintf("nack %d", tag))
	if !r.outstanding[tag] || multiple || !requeue {
		r.errs = append(r.errs, fmt.Sprintf("bad nack of %d", tag))
	}
	delete(r.outstanding, tag)
	return nil
}

func TestAMQPAcker_acks_the_head_at_once_and_never_holds_later_acks(t *testing.T) {
	t.Parallel()
	type verdict struct {
		tag uint64
		ack bool
	}
	tests := []struct {
		name    string
		batches [][]verdict // each batch settled before the acker runs
		want    []string
	}{
		{name: "a settled head goes out as one multiple ack", batches: [][]verdict{{{1, true}, {2, true}, {3, true}}},
			want: []string{"ack 3 multiple=true"}},
		{name: "acks after a gap go out one by one, the head later covers them",
			batches: [][]verdict{{{2, true}, {3, true}}, {{1, true}, {4, true}}},
			want:    []string{"ack 2 multiple=false", "ack 3 multiple=false", "ack 4 multiple=true"}},
		{name: "a nack goes first and alone; the head skips it",
			batches: [][]verdict{{{1, true}, {2, false}, {3, true}}},
			want:    []string{"nack 2", "ack 3 multiple=true"}},
		{name: "a head of nacks only sends no ack", batches: [][]verdict{{{1, false}}, {{2, true}}},
			want: []string{"nack 1", "ack 2 multiple=true"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := newAckRecorder(10)
			k := &amqpAcker{ch: rec, in: make(chan amqpSettlement, 16), quit: make(chan struct{}), ended: make(chan struct{})}
			for _, b := range tt.batches {
				for _, v := range b {
					k.in <- amqpSettlement{tag: v.tag, ack: v.ack}
				}
				k.runBatch()
			}
			assert.Equal(t, tt.want, rec.frames)
			assert.Empty(t, rec.errs, "RabbitMQ would close the channel")
		})
	}
}

func TestAMQPAcker_settles_every_delivery_exactly_once_under_concurrency(t *testing.T) {
	t.Parallel()
	const n = 2000
	rec := newAckRecorder(n)
	k := newAMQPAcker(rec, 64)
	var wg sync.WaitGroup
	for tag := uint64(1); tag <= n; tag++ {
		wg.Go(func() { k.settle(tag, tag%7 != 0) })
	}
	wg.Wait()
	k.stop()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	assert.Empty(t, rec.errs)
	assert.Empty(t, rec.outstanding, "every delivery acked or nacked")
	assert.Less(t, len(rec.frames), n, "some acks went out together")
}
