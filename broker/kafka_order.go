package broker

import (
	"github.com/ThreeDotsLabs/watermill/message"
)

// kafkaRecord is one consumed record on its way through the handlers.
type kafkaRecord struct {
	part      *partitionWork
	partition int32
	offset    int64
	epoch     int32
	key       string // "" for records without a key: they wait for no other
	size      int
	msg       *message.Message // the delivery; replaced by a copy on redelivery
	done      bool
	inFlight  bool
}

// partitionWork keeps the records of one assigned partition that are not
// finished yet, so many can be in flight while two things hold: records with
// the same key are handed out one after another in offset order, and the
// offset to commit never passes a record that is not finished.
//
// This is the scheduling of Confluent's Parallel Consumer ("key" ordering)
// and LINE's Decaton; no Go Kafka client offers it (watermill#374 is open),
// so it is written here. The methods are not safe for concurrent use: the
// consumer calls them under its lock.
type partitionWork struct {
	topic     string
	partition int32

	// window holds the unfinished records, and finished ones above the
	// lowest unfinished, in offset order from window[head].
	window []*kafkaRecord
	head   int
	// blocked maps a key to the records waiting behind its record in
	// flight; a key is present while one of its records is in flight.
	blocked map[string][]*kafkaRecord

	// committable is the offset after the last record of an unbroken run of
	// finished ones from the start (what to commit), with the leader epoch
	// of that record; -1 until a record finished.
	committable      int64
	committableEpoch int32
	marked           int64 // the committable offset last handed to the client

	inFlight int  // records handed out and not finished
	draining bool // being revoked: hand out nothing more, commit what finishes
	revoked  bool // no longer ours: hand out nothing, commit nothing
}

func newPartitionWork(topic string, partition int32) *partitionWork {
	return &partitionWork{topic: topic, partition: partition, blocked: make(map[string][]*kafkaRecord),
		committable: -1, marked: -1}
}

// add takes a record fetched from the partition (offsets rise) and reports
// whether it can be handed out now; if not, it waits behind its key.
func (p *partitionWork) add(r *kafkaRecord) (runnable bool) {
	r.part = p
	p.window = append(p.window, r)
	if r.key == "" {
		return true
	}
	if waiting, busy := p.blocked[r.key]; busy {
		p.blocked[r.key] = append(waiting, r)
		return false
	}
	p.blocked[r.key] = nil
	return true
}

// finish marks r done and returns the record of the same key that may run
// next, if any. It advances the committable offset over every finished
// record at the start of the window.
func (p *partitionWork) finish(r *kafkaRecord) (next *kafkaRecord) {
	r.done = true
	if r.key != "" {
		if waiting := p.blocked[r.key]; len(waiting) > 0 {
			next = waiting[0]
			waiting[0] = nil
			if len(waiting) == 1 {
				p.blocked[r.key] = nil
			} else {
				p.blocked[r.key] = waiting[1:]
			}
		} else {
			delete(p.blocked, r.key)
		}
	}
	for p.head < len(p.window) && p.window[p.head].done {
		last := p.window[p.head]
		p.committable, p.committableEpoch = last.offset+1, last.epoch
		p.window[p.head] = nil
		p.head++
	}
	// Reuse the slice's front once half of it is spent: appends stay
	// amortized O(1) and memory is bounded by the records kept.
	if p.head > 0 && p.head >= len(p.window)/2 {
		n := copy(p.window, p.window[p.head:])
		clear(p.window[n:])
		p.window = p.window[:n]
		p.head = 0
	}
	return next
}

// pending is the number of records kept: unfinished, or finished above the
// lowest unfinished one.
func (p *partitionWork) pending() int { return len(p.window) - p.head }
