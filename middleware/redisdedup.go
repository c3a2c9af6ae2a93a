package middleware

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/redis/go-redis/v9"
)

// RedisDedupStore is a DedupStore in Redis: shared by every pipeline
// process and kept across restarts, so a task that succeeded is not run
// again when its message is redelivered after a crash or a rebalance. Keys
// expire after the TTL; Redis bounds the memory (maxmemory policy).
type RedisDedupStore struct {
	client *redis.Client
	ttl    time.Duration
	prefix string
}

// NewRedisDedupStore connects to the Redis server at rawURL
// (redis://host:port/db) and checks it answers. Keys are prefix+key.
func NewRedisDedupStore(ctx context.Context, rawURL string, ttl time.Duration, prefix string) (*RedisDedupStore, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("dedup ttl must be > 0, got %s", ttl)
	}
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("dedup redis url %q: %w", redacted(rawURL), err)
	}
	client := redis.NewClient(opts)
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("dedup redis at %s: %w", opts.Addr, err)
	}
	return &RedisDedupStore{client: client, ttl: ttl, prefix: prefix}, nil
}

// Seen reports whether key was recorded less than the TTL ago. An error
// means the store cannot say; Dedup then runs the message (at-least-once).
func (s *RedisDedupStore) Seen(ctx context.Context, key string) (bool, error) {
	n, err := s.client.Exists(ctx, s.prefix+key).Result()
	if err != nil {
		return false, fmt.Errorf("dedup redis exists %s: %w", key, err)
	}
	return n > 0, nil
}

// Record remembers key for the TTL.
func (s *RedisDedupStore) Record(ctx context.Context, key string) error {
	if err := s.client.Set(ctx, s.prefix+key, 1, s.ttl).Err(); err != nil {
		return fmt.Errorf("dedup redis set %s: %w", key, err)
	}
	return nil
}

// Claim claims key for ttl with SET NX under prefix+"claim:"+key, holding
// a random token so that release and renew act only on this claim (after a
// lapse another process may hold it).
func (s *RedisDedupStore) Claim(ctx context.Context, key string, ttl time.Duration) (release func(), renew func() error, ok bool, err error) {
	claimKey := s.prefix + "claim:" + key
	token := watermill.NewUUID()
	ok, err = s.client.SetNX(ctx, claimKey, token, ttl).Result()
	if err != nil || !ok {
		if err != nil {
			err = fmt.Errorf("dedup redis claim %s: %w", key, err)
		}
		return nil, nil, false, err
	}
	release = func() {
		// Without ctx: the claim must go even when shutdown cancelled it.
		_ = releaseClaim.Run(context.Background(), s.client, []string{claimKey}, token).Err()
	}
	renew = func() error {
		return renewClaim.Run(context.Background(), s.client, []string{claimKey}, token, ttl.Milliseconds()).Err()
	}
	return release, renew, true, nil
}

// releaseClaim and renewClaim act on a claim only while it holds the token.
var (
	releaseClaim = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)
	renewClaim   = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end return 0`)
)

// Close closes the connection pool.
func (s *RedisDedupStore) Close() error { return s.client.Close() }

// redacted hides the password of a URL for errors and logs.
func redacted(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable url)"
	}
	return u.Redacted()
}
