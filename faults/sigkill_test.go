//go:build faults

package faults_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSIGKILL kills the pipeline with SIGKILL at random points while it
// works through 5,000 events, restarts it each time, and drains: every task
// must run at least once. With the in-memory de-duplication store a
// restarted process forgets what ran, so redelivered tasks run again (the
// count is reported). With the Redis store, the only tasks allowed to run
// twice are those the kill cut off mid-task: their side effect happened
// but they were not yet recorded as done. Those are found right after each
// kill, before the restart, as the ledger entries of the killed process
// with no Redis record.
func TestSIGKILL(t *testing.T) {
	const events, kills = 5000, 3
	for _, kind := range brokers {
		for _, store := range []string{"memory", "redis"} {
			t.Run(kind+"/"+store, func(t *testing.T) {
				t.Parallel()
				e := newEnv(t, kind, options{dedup: store})
				r := rng(t)
				// Kill points: progress marks between 10% and 85%, at least
				// 5% apart, so a restarted process has joined its consumer
				// groups before it is killed again (a member killed while
				// joining stalls kfake's group for its session timeout).
				var points []int
				for len(points) < kills {
					n := events/10 + r.IntN(events*3/4)
					if kind == amqp {
						// RabbitMQ has no group to rejoin: anywhere, even at once.
						points = append(points, r.IntN(events*95/100))
						continue
					}
					if !slices.ContainsFunc(points, func(p int) bool { return abs(p-n) < events/20 }) {
						points = append(points, n)
					}
				}
				slices.Sort(points)
				evs, want := e.faultEvents("kill", events)
				p := e.start()
				e.publish(evs)

				midTask := map[string]bool{}
				var resumes []time.Duration // amqp: restart to first task executed
				// kill kills p and, with Redis, notes the tasks it cut off mid-task.
				kill := func(p *pipeline) (killed int, entries []entry) {
					before := len(e.readLedger())
					killed = p.pid()
					p.kill()
					// Scripts the killed process started run on (their own
					// process group): let them write their line.
					time.Sleep(500 * time.Millisecond)
					entries = e.readLedger()
					if store == "redis" {
						var ofKilled []entry
						for i, en := range entries {
							if en.pid == killed || (i >= before && en.pid != killed) {
								ofKilled = append(ofKilled, en)
							}
						}
						for id := range e.midTask(ofKilled) {
							midTask[id] = true
						}
					}
					return killed, entries
				}
				for _, at := range points {
					e.waitProgress(want, at, 4*time.Minute, p)
					killed, entries := kill(p)
					t.Logf("SIGKILL pid %d at %d of %d tasks executed", killed, count(entries, want).executed, events)
					p = e.start()
					if kind == amqp {
						// And once more within a second of /readyz.
						after := time.Duration(r.IntN(1000)) * time.Millisecond
						time.Sleep(after)
						killed, entries = kill(p)
						t.Logf("SIGKILL pid %d %s after it was ready", killed, after)
						restarted := time.Now()
						p = e.start()
						if took, ok := e.resumed(want, count(entries, want).executed, restarted, 60*time.Second); ok {
							t.Logf("processing again %s after the restart", took.Round(time.Millisecond))
							resumes = append(resumes, took)
						} else {
							t.Errorf("no task executed within 60s of the restart at %s", restarted.Format(time.TimeOnly))
						}
					}
				}
				e.waitDone(want, 4*time.Minute, p)
				e.waitQuiet(3 * time.Second)
				_, err := p.term(e.opts.shutdown + 5*time.Second)
				require.NoError(t, err)

				notes := fmt.Sprintf("%d SIGKILLs at %v tasks; %s dedup", kills, points, store)
				if store == "redis" {
					notes += fmt.Sprintf("; %d tasks killed mid-execution", len(midTask))
				}
				if kind == amqp {
					notes += fmt.Sprintf("; each followed by a SIGKILL within 1 s of ready; resumed after %v", resumes)
					for _, took := range resumes {
						assert.LessOrEqual(t, took, 30*time.Second, "processing again within 30 s of a restart")
					}
				}
				tl := e.record(1, "SIGKILL ×3 during 5,000 events, restart, drain", events, want, notes)
				assert.Zero(t, tl.lost, "tasks lost")
				assert.Empty(t, tl.unexpected, "tasks nobody sent")
				assert.Empty(t, e.dlq(), "nothing is poisoned")
				if store == "redis" {
					for _, id := range tl.duplicated {
						assert.True(t, midTask[id], "task %s ran twice but was not cut off mid-task by a kill", id)
					}
				}
			})
		}
	}
}

func abs(n int) int { return max(n, -n) }

// resumed waits until more than had tasks are executed and returns how
// long after start (the restart) that was; ok is false if it did not
// happen within limit. With every task executed there is nothing to resume.
func (e *env) resumed(want []string, had int, start time.Time, limit time.Duration) (time.Duration, bool) {
	if had >= len(want) {
		return 0, true
	}
	for time.Since(start) < limit {
		if count(e.readLedger(), want).executed > had {
			return time.Since(start), true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return limit, false
}
