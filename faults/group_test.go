//go:build faults

package faults_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestTwoProcesses runs two pipeline processes in one consumer group (on
// RabbitMQ: competing consumers of the same queues) over 4,000 events: B
// joins once A has done 10%, and A is killed with SIGKILL at 50%, leaving B
// to finish (B must have run tasks before A dies: the group really was
// shared). Both share the Redis de-duplication store. Nothing may be
// lost; duplicates are reported (a Kafka rebalance can hand a partition to
// B while A still works on its message, and the kill cuts tasks off).
func TestTwoProcesses(t *testing.T) {
	const events = 4000
	for _, kind := range brokers {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind, options{dedup: "redis"})
			evs, want := e.faultEvents("group", events)
			a := e.start()
			e.publish(evs)
			e.waitProgress(want, events/10, 3*time.Minute, a)
			b := e.start()
			joined := time.Now()
			// A Kafka rebalance takes a few seconds: kill A only once B works.
			ranByB := e.waitRunBy(b, 20, 2*time.Minute)
			tookB := time.Since(joined)
			e.waitProgress(want, events/2, 3*time.Minute, a, b)
			atKill := count(e.readLedger(), want).executed
			killedA := a.pid()
			a.kill()
			e.waitDone(want, 3*time.Minute, b)
			e.waitQuiet(3 * time.Second)
			_, err := b.term(e.opts.shutdown + 5*time.Second)
			require.NoError(t, err)

			byPid := map[int]int{}
			for _, en := range e.readLedger() {
				byPid[en.pid]++
			}
			tl := e.record(4, "two processes, one group: B joins at 10%, A SIGKILLed at 50%", events, want,
				fmt.Sprintf("B ran its first %d tasks %.1fs after starting; A killed at %d executed; A ran %d tasks, B %d; redis dedup",
					ranByB, tookB.Seconds(), atKill, byPid[killedA], byPid[b.pid()]))
			assert.Zero(t, tl.lost, "tasks lost")
			assert.Empty(t, tl.unexpected)
			assert.Empty(t, e.dlq(), "nothing is poisoned")
		})
	}
}

// waitRunBy waits until pipeline p ran at least n tasks and returns how
// many it ran.
func (e *env) waitRunBy(p *pipeline, n int, timeout time.Duration) int {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ran := 0
		for _, en := range e.readLedger() {
			if en.pid == p.pid() && en.kind == "done" {
				ran++
			}
		}
		if ran >= n {
			return ran
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s ran %d tasks within %s, want %d\n%s", p.name, ran, timeout, n, p.tail(25))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestThreeProcessesKafka runs three pipeline processes in one Kafka group
// over 6,000 events, with 12 partitions per topic (a multiple of three: a
// member gets whole partitions). All three join before the events are
// published, so each should run about a third of the tasks: within 15% of
// the mean by the time half of them ran. Then one process is killed with
// SIGKILL, the others take its partitions over and finish: nothing lost.
func TestThreeProcessesKafka(t *testing.T) {
	const events, procs = 6000, 3
	e := newEnv(t, kafka, options{dedup: "redis", eventPartitions: 12, taskPartitions: 12})
	evs, want := e.faultEvents("three", events)
	ps := make([]*pipeline, procs)
	for i := range ps {
		ps[i] = e.start()
	}
	e.waitGroupStable(e.id+"."+e.events, procs, 2*time.Minute)
	e.waitGroupStable(e.id+"."+e.tasks, procs, 2*time.Minute)
	e.publish(evs)
	e.waitProgress(want, events/2, 3*time.Minute, ps...)
	shares := map[int]int{}
	total := 0
	for _, en := range e.readLedger() {
		if en.kind == "done" {
			shares[en.pid]++
			total++
		}
	}
	mean := float64(total) / procs
	var spread []string
	for _, p := range ps {
		n := shares[p.pid()]
		spread = append(spread, fmt.Sprintf("%d", n))
		assert.InDelta(t, mean, float64(n), 0.15*mean, "process %s ran %d of %d tasks (mean %.0f)", p.name, n, total, mean)
	}
	killed := ps[0]
	killed.kill()
	e.waitDone(want, 3*time.Minute, ps[1:]...)
	e.waitQuiet(3 * time.Second)
	for _, p := range ps[1:] {
		_, err := p.term(e.opts.shutdown + 5*time.Second)
		require.NoError(t, err)
	}
	tl := e.record(4, "three processes, one Kafka group: load share, one SIGKILLed at 50%", events, want,
		fmt.Sprintf("tasks per process at 50%%: %s (mean %.0f, allowed ±15%%); %s killed; redis dedup",
			strings.Join(spread, "/"), mean, killed.name))
	assert.Zero(t, tl.lost, "tasks lost")
	assert.Empty(t, tl.unexpected)
	assert.Empty(t, e.dlq(), "nothing is poisoned")
}
