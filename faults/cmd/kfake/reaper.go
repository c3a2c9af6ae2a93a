package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// reaper works around a kfake bug that real Kafka does not have. kfake arms
// a classic-group member's session timer only when it delivers the member a
// response; a member whose process died while its JoinGroup waited for the
// rebalance never gets one (the reply to a closed connection fails). Once
// the leader syncs, the group is Stable with a member nobody runs, owning
// partitions nobody consumes, for good (seen in the fault suite: a process
// SIGKILLed 0.1 s after start, while it joined, left its restarted successor
// with half the partitions, minutes after). Kafka schedules the expiry of
// every member when a join completes, delivered or not, and drops it
// session.timeout.ms later; the reaper does the same: a member whose client
// connection is closed and that sent no group request for its session
// timeout is removed with a LeaveGroup on its behalf.
type reaper struct {
	c    *kfake.Cluster
	port int // kfake's listen port, to find the members' connections

	mu      sync.Mutex
	members map[string]*memberSeen // by member id
}

type memberSeen struct {
	group   string
	last    time.Time
	session time.Duration
	goneAt  time.Time // when its connection was first seen closed; zero while open
}

func newReaper(c *kfake.Cluster) (*reaper, error) {
	_, port, err := net.SplitHostPort(c.ListenAddrs()[0])
	if err != nil {
		return nil, err
	}
	r := &reaper{c: c, members: map[string]*memberSeen{}}
	if r.port, err = strconv.Atoi(port); err != nil {
		return nil, err
	}
	c.Control(r.observe)
	return r, nil
}

// observe notes which member sent a group request, and when; kfake then
// handles the request as usual.
func (r *reaper) observe(req kmsg.Request) (kmsg.Response, error, bool) {
	r.c.KeepControl()
	var group, member string
	session := time.Duration(0)
	switch q := req.(type) {
	case *kmsg.JoinGroupRequest:
		group, member, session = q.Group, q.MemberID, time.Duration(q.SessionTimeoutMillis)*time.Millisecond
	case *kmsg.SyncGroupRequest:
		group, member = q.Group, q.MemberID
	case *kmsg.HeartbeatRequest:
		group, member = q.Group, q.MemberID
	case *kmsg.OffsetCommitRequest:
		group, member = q.Group, q.MemberID
	}
	if member == "" {
		return nil, nil, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.members[member]
	if m == nil {
		m = &memberSeen{group: group, session: 10 * time.Second}
		r.members[member] = m
	}
	m.last = time.Now()
	if session > 0 {
		m.session = session
	}
	return nil, nil, false
}

// run checks the members every second until ctx ends.
func (r *reaper) run(ctx context.Context) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(r.c.ListenAddrs()...))
	if err != nil {
		fmt.Fprintf(os.Stderr, "kfake: reaper client: %v\n", err)
		return
	}
	defer cl.Close()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for group, id := range r.dead() {
			req := kmsg.NewPtrLeaveGroupRequest()
			req.Group = group
			leave := kmsg.NewLeaveGroupRequestMember()
			leave.MemberID = id
			req.Members = append(req.Members, leave)
			if _, err := req.RequestWith(ctx, cl); err != nil {
				fmt.Fprintf(os.Stderr, "kfake: reaper: remove member %s of %s: %v\n", id, group, err)
				continue
			}
			fmt.Fprintf(os.Stderr, "kfake: reaper: removed member %s of group %s: connection closed, silent for its session timeout\n", id, group)
		}
	}
}

// dead returns, by group, members that are still in their group, whose
// connection is closed, and that have been silent for their session timeout.
func (r *reaper) dead() map[string]string {
	r.mu.Lock()
	groups := map[string]bool{}
	for _, m := range r.members {
		groups[m.group] = true
	}
	r.mu.Unlock()
	// GroupInfo runs on kfake's loop, which also runs observe: never call
	// it holding r.mu.
	infos := map[string]*kfake.GroupInfo{}
	for group := range groups {
		if info := r.c.GroupInfo(group); info != nil {
			infos[group] = info
		}
	}
	open := openPeers(r.port)
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]string{}
	inGroup := map[string]bool{}
	for group, info := range infos {
		for _, gm := range info.Members {
			inGroup[gm.MemberID] = true
			m := r.members[gm.MemberID]
			if m == nil {
				continue
			}
			if open[peerPort(gm.ClientHost)] {
				m.goneAt = time.Time{}
				continue
			}
			if m.goneAt.IsZero() {
				m.goneAt = time.Now()
			}
			if time.Since(m.goneAt) >= m.session && time.Since(m.last) >= m.session {
				out[group] = gm.MemberID
			}
		}
	}
	for id, m := range r.members {
		if _, known := infos[m.group]; known && !inGroup[id] {
			delete(r.members, id)
		}
	}
	return out
}

// peerPort returns the port of a member's client host ("127.0.0.1:50768"
// or "/127.0.0.1:50768"), 0 if there is none.
func peerPort(host string) int {
	i := strings.LastIndexByte(host, ':')
	if i < 0 {
		return 0
	}
	p, _ := strconv.Atoi(host[i+1:])
	return p
}

// openPeers returns the remote ports of established TCP connections to
// the local port, from /proc/net/tcp and tcp6.
func openPeers(port int) map[int]bool {
	out := map[int]bool{}
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(file)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 4 || fs[3] != "01" { // ESTABLISHED
				continue
			}
			if hexPort(fs[1]) == port {
				out[hexPort(fs[2])] = true
			}
		}
		_ = f.Close()
	}
	return out
}

// hexPort reads the port of a /proc/net/tcp address ("0100007F:1F90").
func hexPort(addr string) int {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return -1
	}
	p, err := strconv.ParseInt(addr[i+1:], 16, 32)
	if err != nil {
		return -1
	}
	return int(p)
}
