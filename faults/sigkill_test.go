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
				// Kill points anywhere: two at random progress marks between
				// 10% and 85% (however close), and in between one 0.1–0.9 s
				// after a restarted process said it is running, while its
				// consumers are still joining their groups.
				points := []int{events/10 + r.IntN(events*3/4), events/10 + r.IntN(events*3/4)}
				slices.Sort(points)
				joinKill := time.Duration(100+r.IntN(800)) * time.Millisecond
				evs, want := e.faultEvents("kill", events)
				p := e.start()
				e.publish(evs)

				midTask := map[string]bool{}
				var resumes []time.Duration
				kill := func(at string) {
					before := len(e.readLedger())
					killed := p.pid()
					p.kill()
					// Scripts the killed process started run on (their own
					// process group): let them write their line.
					time.Sleep(500 * time.Millisecond)
					entries := e.readLedger()
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
					t.Logf("SIGKILL pid %d %s, %d of %d tasks executed", killed, at, count(entries, want).executed, events)
				}
				for i, at := range points {
					e.waitProgress(want, at, 4*time.Minute, p)
					kill(fmt.Sprintf("at progress mark %d", at))
					p = e.start()
					if i == 0 {
						time.Sleep(joinKill)
						kill(fmt.Sprintf("%s after it was running (joining its groups)", joinKill))
						p = e.start()
					}
					resumes = append(resumes, e.waitResume(want, 2*time.Minute, p))
				}
				e.waitDone(want, 4*time.Minute, p)
				e.waitQuiet(3 * time.Second)
				_, err := p.term(e.opts.shutdown + 5*time.Second)
				require.NoError(t, err)

				notes := fmt.Sprintf("%d SIGKILLs at %v tasks and %s after a restart; processing resumed %v after each restart; %s dedup",
					kills, points, joinKill, resumes, store)
				if store == "redis" {
					notes += fmt.Sprintf("; %d tasks killed mid-execution", len(midTask))
				}
				tl := e.record(1, "SIGKILL ×3 during 5,000 events, restart, drain", events, want, notes)
				assert.Zero(t, tl.lost, "tasks lost")
				for _, d := range resumes {
					assert.LessOrEqual(t, d, 30*time.Second, "a restarted process is processing again within 30 s")
				}
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

// waitResume waits until the restarted process p starts a task, while some
// are still to run, and returns how long after it said it was running.
func (e *env) waitResume(want []string, timeout time.Duration, p *pipeline) time.Duration {
	e.t.Helper()
	start := time.Now()
	if count(e.readLedger(), want).executed == len(want) {
		return 0
	}
	for time.Since(start) < timeout {
		if slices.ContainsFunc(e.readLedger(), func(en entry) bool { return en.pid == p.pid() }) {
			return time.Since(start).Round(100 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("no task ran within %s of the restart%s", timeout, logTails([]*pipeline{p}))
	return timeout
}
