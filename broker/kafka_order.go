package broker

import (
	"slices"
	"strconv"
	"strings"

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

// recordState says what add did with a record.
type recordState int

const (
	recordRunnable recordState = iota // may be handed out now
	recordWaiting                     // waits behind its key's record in flight
	recordDone                        // finished before (commit metadata): skipped
)

// doneMetadataPrefix starts the commit metadata that lists the offsets
// finished above a committed offset (see partitionWork.doneAbove).
const doneMetadataPrefix = "eventpipe-done:v1:"

// doneMetadataMaxBytes keeps that metadata under Kafka's default
// offset.metadata.max.bytes (4096); the finished offsets past it are left
// out and run again after a restart.
const doneMetadataMaxBytes = 3500

// partitionWork keeps the records of one assigned partition that are not
// finished yet, so many can be in flight while two things hold: records with
// the same key are handed out one after another in offset order, and the
// offset to commit never passes a record that is not finished. The offsets
// finished above it go with the commit as metadata and are skipped when the
// partition is consumed again, so a graceful stop re-runs nothing.
//
// This is the scheduling of Confluent's Parallel Consumer ("key" ordering,
// offsets encoded in the commit metadata) and LINE's Decaton; no Go Kafka
// client offers it (watermill#374 is open), so it is written here. The
// methods are not safe for concurrent use: the consumer calls them under
// its lock.
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
	// skip holds offsets finished before this assignment (from the commit
	// metadata), above skipFrom.
	skip map[int64]bool

	// next is the offset after the last record of an unbroken run of
	// finished ones (where to resume), with that record's leader epoch;
	// -1 until a record finished.
	next      int64
	nextEpoch int32
	// committed and committedMeta are what was last committed.
	committed     int64
	committedMeta string

	inFlight int  // records handed out and not finished
	draining bool // being revoked: hand out nothing more, commit what finishes
	revoked  bool // no longer ours: hand out nothing, commit nothing
}

func newPartitionWork(topic string, partition int32) *partitionWork {
	return &partitionWork{topic: topic, partition: partition, blocked: make(map[string][]*kafkaRecord),
		next: -1, committed: -1}
}

// add takes a record fetched from the partition (offsets rise).
func (p *partitionWork) add(r *kafkaRecord) recordState {
	r.part = p
	if p.skip[r.offset] {
		delete(p.skip, r.offset)
		r.done = true
		p.window = append(p.window, r)
		p.advance()
		return recordDone
	}
	p.window = append(p.window, r)
	if r.key == "" {
		return recordRunnable
	}
	if waiting, busy := p.blocked[r.key]; busy {
		p.blocked[r.key] = append(waiting, r)
		return recordWaiting
	}
	p.blocked[r.key] = nil
	return recordRunnable
}

// finish marks r done and returns the record of the same key that may run
// next, if any.
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
	p.advance()
	return next
}

// advance moves the resume point over every finished record at the start
// of the window.
func (p *partitionWork) advance() {
	for p.head < len(p.window) && p.window[p.head].done {
		last := p.window[p.head]
		p.next, p.nextEpoch = last.offset+1, last.epoch
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
}

// commitPoint returns the offset to commit: the lowest unfinished record's,
// or past the last finished one; ok is false before anything was fetched.
func (p *partitionWork) commitPoint() (offset int64, epoch int32, ok bool) {
	if p.head < len(p.window) {
		r := p.window[p.head]
		return r.offset, r.epoch, true
	}
	return p.next, p.nextEpoch, p.next >= 0
}

// doneAbove encodes the offsets finished above base (the commit point) as
// ranges relative to base, "eventpipe-done:v1:3-5,9": so many that the
// metadata stays under doneMetadataMaxBytes. "" when none finished.
func (p *partitionWork) doneAbove(base int64) string {
	var b strings.Builder
	for i := p.head; i < len(p.window); i++ {
		if !p.window[i].done {
			continue
		}
		first := p.window[i].offset
		for i+1 < len(p.window) && p.window[i+1].done {
			i++
		}
		last := p.window[i].offset
		var part []byte
		if b.Len() > 0 {
			part = append(part, ',')
		}
		part = strconv.AppendInt(part, first-base, 10)
		if last > first {
			part = append(part, '-')
			part = strconv.AppendInt(part, last-base, 10)
		}
		if len(doneMetadataPrefix)+b.Len()+len(part) > doneMetadataMaxBytes {
			break
		}
		b.Write(part)
	}
	if b.Len() == 0 {
		return ""
	}
	return doneMetadataPrefix + b.String()
}

// parseDoneAbove returns the absolute offsets listed by doneAbove's
// metadata over base; nil for metadata of another form (kgo's own commits
// carry the member id).
func parseDoneAbove(meta string, base int64) map[int64]bool {
	rest, ok := strings.CutPrefix(meta, doneMetadataPrefix)
	if !ok || rest == "" {
		return nil
	}
	out := make(map[int64]bool)
	for part := range strings.SplitSeq(rest, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := strconv.ParseInt(lo, 10, 64)
		if err != nil || first < 1 {
			return nil
		}
		last := first
		if isRange {
			if last, err = strconv.ParseInt(hi, 10, 64); err != nil || last < first {
				return nil
			}
		}
		// Bounded by what doneAbove writes: the window is at most
		// kafkaMaxBufferedRecords long.
		if last-first > kafkaMaxBufferedRecords || len(out) > kafkaMaxBufferedRecords {
			return nil
		}
		for o := first; o <= last; o++ {
			out[base+o] = true
		}
	}
	return out
}

// unfinished returns the records kept that are neither finished nor in flight.
func (p *partitionWork) unfinished() []*kafkaRecord {
	return slices.DeleteFunc(slices.Clone(p.window[p.head:]), func(r *kafkaRecord) bool { return r.done || r.inFlight })
}
