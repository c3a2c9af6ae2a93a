package middleware

import (
	"container/list"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
)

// DedupStore remembers the keys of messages handled successfully.
type DedupStore interface {
	// Seen reports whether key was recorded and has not expired.
	Seen(ctx context.Context, key string) (bool, error)
	// Record remembers key.
	Record(ctx context.Context, key string) error
}

// DedupClaimer is a DedupStore shared by several processes that can also
// say a key is being handled right now, so that two processes given the
// same key at once (a redelivery while the first still runs it) do not both
// run it. A claim lasts ttl unless renewed; a process that dies lets it
// lapse.
type DedupClaimer interface {
	DedupStore
	// Claim claims key for ttl; false when another holder has it.
	Claim(ctx context.Context, key string, ttl time.Duration) (release func(), renew func() error, ok bool, err error)
}

// Claim timing: a claim lapses claimTTL after its holder stopped renewing
// it (renewed every claimTTL/3 while the handler runs); a delivery that
// finds the key claimed checks again every claimPoll.
const (
	claimTTL  = 10 * time.Second
	claimPoll = 250 * time.Millisecond
)

// Dedup skips messages whose key was already handled successfully: they are
// acked without running the handler (logged at Debug). Unlike Watermill's
// Deduplicator it records the key only after the handler succeeded, so a
// message that failed and is redelivered runs again.
//
// Deliveries of the same key that arrive while one is running wait for it
// (in this process, and in others when the store is a DedupClaimer), then
// run only if it failed. A key of "" is not
// de-duplicated. A store error never loses a message: a failed lookup runs
// the handler (a possible duplicate, logged), a failed record still acks.
// It panics on a nil store or keyFunc (a wiring bug); logger may be nil.
func Dedup(store DedupStore, keyFunc func(*message.Message) string, logger watermill.LoggerAdapter) message.HandlerMiddleware {
	if store == nil || keyFunc == nil {
		panic("middleware.Dedup: nil store or keyFunc")
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	running := &keyLocks{held: map[string]chan struct{}{}}
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			key := keyFunc(msg)
			if key == "" {
				return h(msg)
			}
			ctx := msg.Context()
			unlock, err := running.lock(ctx, key)
			if err != nil {
				return nil, err
			}
			defer unlock()

			if ctx.Err() != nil {
				// Shutdown: do not run on a lookup that cannot answer.
				return nil, ctx.Err()
			}
			fields := watermill.LogFields{"dedup_key": key, "message_uuid": msg.UUID}
			seen, err := store.Seen(ctx, key)
			switch {
			case err != nil:
				logger.Error("Dedup lookup failed, handling the message anyway", err, fields)
			case seen:
				logger.Debug("Duplicate message acked without handling", fields)
				return nil, nil
			}

			if claimer, ok := store.(DedupClaimer); ok {
				release, done, err := claim(ctx, claimer, key, logger, fields)
				if err != nil || done {
					return nil, err
				}
				defer release()
			}

			out, err := h(msg)
			if err != nil {
				return out, err
			}
			// The work is done: record it even if shutdown cancels ctx now.
			if err := store.Record(context.WithoutCancel(ctx), key); err != nil {
				logger.Error("Dedup record failed, a redelivery would run again", err, fields)
			}
			return out, nil
		}
	}
}

// claim claims key for this process, waiting while another holds it.
// done is true when the holder succeeded meanwhile (the message is then
// acked without running); err is set when ctx ended first. release gives
// the claim up and stops renewing it. A store error runs the message
// anyway: never lose it for a duplicate.
func claim(ctx context.Context, c DedupClaimer, key string, logger watermill.LoggerAdapter,
	fields watermill.LogFields) (release func(), done bool, err error) {
	noop := func() {}
	for waited := false; ; waited = true {
		rel, renew, ok, err := c.Claim(ctx, key, claimTTL)
		switch {
		case err != nil:
			logger.Error("Dedup claim failed, handling the message anyway", err, fields)
			return noop, false, nil
		case ok:
			// The last holder may have succeeded between our lookup and
			// this claim.
			if seen, err := c.Seen(ctx, key); err == nil && seen {
				rel()
				logger.Debug("Duplicate message acked without handling", fields)
				return noop, true, nil
			}
			return keepRenewing(rel, renew, logger, fields), false, nil
		}
		if !waited {
			logger.Debug("Message being handled by another process, waiting for it", fields)
		}
		select {
		case <-ctx.Done():
			return noop, false, ctx.Err()
		case <-time.After(claimPoll):
		}
		if seen, err := c.Seen(ctx, key); err == nil && seen {
			logger.Debug("Duplicate message acked without handling", fields)
			return noop, true, nil
		}
	}
}

// keepRenewing renews a claim every claimTTL/3 until the returned release
// is called, which also gives the claim up.
func keepRenewing(release func(), renew func() error, logger watermill.LoggerAdapter, fields watermill.LogFields) func() {
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(claimTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if err := renew(); err != nil {
					logger.Error("Dedup claim renewal failed, another process may handle the message too", err, fields)
				}
			}
		}
	}()
	return func() {
		close(stop)
		<-stopped
		release()
	}
}

// keyLocks serialises deliveries of the same key.
type keyLocks struct {
	mu   sync.Mutex
	held map[string]chan struct{} // closed when the holder unlocks
}

func (l *keyLocks) lock(ctx context.Context, key string) (unlock func(), err error) {
	for {
		l.mu.Lock()
		done, busy := l.held[key]
		if !busy {
			done = make(chan struct{})
			l.held[key] = done
			l.mu.Unlock()
			return func() {
				l.mu.Lock()
				delete(l.held, key)
				l.mu.Unlock()
				close(done)
			}, nil
		}
		l.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// MemoryDedupStore is a DedupStore in memory, bounded in entries (the
// oldest record is evicted first) and in age (entries expire after the TTL).
// It is safe for concurrent use. It forgets everything on restart, so a
// redelivery after a restart runs again (at-least-once).
type MemoryDedupStore struct {
	maxEntries int
	ttl        time.Duration
	now        func() time.Time

	mu    sync.Mutex
	byKey map[string]*list.Element
	order *list.List // of *dedupEntry, oldest record first
}

type dedupEntry struct {
	key string
	at  time.Time
}

// NewMemoryDedupStore returns a store holding at most maxEntries keys for
// at most ttl each. Both must be positive.
func NewMemoryDedupStore(maxEntries int, ttl time.Duration) (*MemoryDedupStore, error) {
	if maxEntries < 1 {
		return nil, fmt.Errorf("dedup max entries must be >= 1, got %d", maxEntries)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("dedup ttl must be > 0, got %s", ttl)
	}
	return &MemoryDedupStore{
		maxEntries: maxEntries,
		ttl:        ttl,
		now:        time.Now,
		byKey:      map[string]*list.Element{},
		order:      list.New(),
	}, nil
}

// Seen reports whether key was recorded less than the TTL ago.
func (s *MemoryDedupStore) Seen(_ context.Context, key string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	el, ok := s.byKey[key]
	if !ok {
		return false, nil
	}
	if s.now().Sub(el.Value.(*dedupEntry).at) >= s.ttl {
		s.remove(el)
		return false, nil
	}
	return true, nil
}

// Record remembers key from now on, evicting expired entries and then the
// oldest ones beyond the size bound.
func (s *MemoryDedupStore) Record(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if el, ok := s.byKey[key]; ok {
		el.Value.(*dedupEntry).at = now
		s.order.MoveToBack(el)
	} else {
		s.byKey[key] = s.order.PushBack(&dedupEntry{key: key, at: now})
	}
	// The list is ordered by record time, so expired entries are at the front.
	for el := s.order.Front(); el != nil && now.Sub(el.Value.(*dedupEntry).at) >= s.ttl; el = s.order.Front() {
		s.remove(el)
	}
	for s.order.Len() > s.maxEntries {
		s.remove(s.order.Front())
	}
	return nil
}

// Len returns the number of keys held, expired ones not yet evicted included.
func (s *MemoryDedupStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.order.Len()
}

func (s *MemoryDedupStore) remove(el *list.Element) {
	delete(s.byKey, el.Value.(*dedupEntry).key)
	s.order.Remove(el)
}
