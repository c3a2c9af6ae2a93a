package broker

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/task"
)

func TestKafkaMarshaler_marshal_keys_records_by_partition_key(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		meta    map[string]string
		wantKey string // "" = no key
	}{
		{name: "partition key becomes the record key", meta: map[string]string{task.MetaPartitionKey: "order-1"}, wantKey: "order-1"},
		{name: "no partition key leaves the key empty", meta: map[string]string{"correlation_id": "c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			msg := message.NewMessage("id-1", []byte(`{"a":1}`))
			for k, v := range tt.meta {
				msg.Metadata.Set(k, v)
			}
			rec, err := marshalRecord("schedule-tasks", msg)
			require.NoError(t, err)
			assert.Equal(t, "schedule-tasks", rec.Topic)
			if tt.wantKey == "" {
				assert.Nil(t, rec.Key)
			} else {
				assert.Equal(t, tt.wantKey, string(rec.Key))
			}
			headers := map[string]string{}
			for _, h := range rec.Headers {
				headers[string(h.Key)] = string(h.Value)
			}
			assert.Equal(t, "id-1", headers[KafkaUUIDHeader])
			for k, v := range tt.meta {
				assert.Equal(t, v, headers[k])
			}
		})
	}
}

func TestKafkaMarshaler_marshal_rejects_reserved_uuid_metadata(t *testing.T) {
	t.Parallel()
	msg := message.NewMessage("id", nil)
	msg.Metadata.Set(KafkaUUIDHeader, "x")
	_, err := marshalRecord("t", msg)
	assert.ErrorContains(t, err, "reserved")
}

func TestKafkaMarshaler_unmarshal_accepts_records_from_any_producer(t *testing.T) {
	t.Parallel()
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	tests := []struct {
		name     string
		rec      *kgo.Record
		wantID   string
		wantMeta map[string]string
	}{
		{
			name:     "watermill record keeps uuid and metadata",
			rec:      &kgo.Record{Topic: "t", Headers: []kgo.RecordHeader{h(KafkaUUIDHeader, "u-1"), h("correlation_id", "c-1")}},
			wantID:   "u-1",
			wantMeta: map[string]string{"correlation_id": "c-1"},
		},
		{
			name:     "foreign record without headers gets a position id and its key as partition key",
			rec:      &kgo.Record{Topic: "business-events", Partition: 3, Offset: 1042, Key: []byte("cust-9")},
			wantID:   "kafka:business-events:3:1042",
			wantMeta: map[string]string{task.MetaPartitionKey: "cust-9"},
		},
		{
			name:     "partition key header wins over the record key",
			rec:      &kgo.Record{Topic: "t", Key: []byte("k"), Headers: []kgo.RecordHeader{h(task.MetaPartitionKey, "header-key")}},
			wantID:   "kafka:t:0:0",
			wantMeta: map[string]string{task.MetaPartitionKey: "header-key"},
		},
		{
			name:     "no key and no headers",
			rec:      &kgo.Record{Topic: "t", Offset: 7},
			wantID:   "kafka:t:0:7",
			wantMeta: map[string]string{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.rec.Value = []byte(`{"eventType":"x"}`)
			msg := unmarshalRecord(tt.rec)
			assert.Equal(t, tt.wantID, msg.UUID)
			assert.Equal(t, message.Metadata(tt.wantMeta), msg.Metadata)
			assert.Equal(t, `{"eventType":"x"}`, string(msg.Payload))
		})
	}
}

func TestKafkaMarshaler_round_trip_keeps_uuid_payload_and_metadata(t *testing.T) {
	t.Parallel()
	in := message.NewMessage("id-7", []byte("payload"))
	in.Metadata.Set(task.MetaPartitionKey, "k")
	in.Metadata.Set("priority", "HIGH")
	rec, err := marshalRecord("t", in)
	require.NoError(t, err)
	out := unmarshalRecord(rec)
	assert.True(t, in.Equals(out), "in %v, out %v", in.Metadata, out.Metadata)
}

func TestNewKafka_rejects_bad_config_naming_the_field(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.txt")
	require.NoError(t, os.WriteFile(notPEM, []byte("not a certificate"), 0o600))
	tests := []struct {
		name    string
		mutate  func(*config.Kafka)
		wantErr string
	}{
		{name: "no brokers", mutate: func(k *config.Kafka) { k.Brokers = nil }, wantErr: "broker.kafka.brokers must list"},
		{name: "zero partitions", mutate: func(k *config.Kafka) { k.Partitions = map[string]int{"t": 0} }, wantErr: "broker.kafka.partitions[t] must be >= 1, got 0"},
		{name: "missing CA file", mutate: func(k *config.Kafka) { k.TLS = config.TLS{Enabled: true, CAFile: filepath.Join(dir, "nope.pem")} }, wantErr: "broker.kafka.tls.ca_file"},
		{name: "CA file without PEM", mutate: func(k *config.Kafka) { k.TLS = config.TLS{Enabled: true, CAFile: notPEM} }, wantErr: "no PEM certificate"},
		{name: "cert without key", mutate: func(k *config.Kafka) { k.TLS = config.TLS{Enabled: true, CertFile: notPEM} }, wantErr: "cert_file and key_file must be set together"},
		{name: "unknown SASL mechanism", mutate: func(k *config.Kafka) { k.SASL = config.SASL{Mechanism: "GSSAPI", Username: "u"} }, wantErr: `broker.kafka.sasl.mechanism must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or empty, got "GSSAPI"`},
		{name: "SASL without user", mutate: func(k *config.Kafka) { k.SASL = config.SASL{Mechanism: config.SASLPlain} }, wantErr: "broker.kafka.sasl.username must be set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := config.Default().Broker.Kafka
			cfg.Brokers = []string{"127.0.0.1:1"}
			tt.mutate(&cfg)
			k, err := NewKafka(cfg, config.Default().Topics, nil)
			require.Error(t, err)
			assert.Nil(t, k)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

func TestNewKafka_fails_when_no_broker_is_reachable(t *testing.T) {
	t.Parallel()
	cfg := config.Default().Broker.Kafka
	cfg.Brokers = []string{closedAddr(t)}
	_, err := NewKafka(cfg, config.Default().Topics, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "connect to kafka brokers ["+cfg.Brokers[0]+"]")
}

// closedAddr returns a loopback address nobody listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// newKfake starts an in-process Kafka (kfake) for one test.
func newKfake(t *testing.T, opts ...kfake.Opt) []string {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

func testTopics(t *testing.T) config.Topics {
	t.Helper()
	id := watermill.NewShortUUID()
	return config.Topics{Events: "ev-" + id, Tasks: "tasks-" + id, Results: "res-" + id, PoisonSuffix: ".dlq"}
}

func newTestKafka(t *testing.T, brokers []string, mutate func(*config.Kafka)) (*Kafka, config.Topics) {
	t.Helper()
	topics := testTopics(t)
	cfg := config.Default().Broker.Kafka
	cfg.Brokers = brokers
	cfg.Partitions = map[string]int{topics.Events: 12, topics.Tasks: 6}
	if mutate != nil {
		mutate(&cfg)
	}
	k, err := NewKafka(cfg, topics, watermill.NopLogger{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = k.Close() })
	return k, topics
}

func TestKafka_creates_pipeline_topics_with_configured_partitions(t *testing.T) {
	t.Parallel()
	brokers := newKfake(t)
	k, topics := newTestKafka(t, brokers, nil)

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	require.NoError(t, err)
	defer cl.Close()
	got, err := kadm.NewClient(cl).ListTopics(t.Context())
	require.NoError(t, err)
	want := map[string]int32{
		topics.Events: 12, topics.Tasks: 6, topics.Results: 1,
		topics.Poison(topics.Events): 1, topics.Poison(topics.Tasks): 1,
	}
	for topic, n := range want {
		require.Contains(t, got, topic)
		assert.Len(t, got[topic].Partitions, int(n), topic)
	}
	assert.Equal(t, 12, k.Partitions(topics.Events))
	assert.Equal(t, "eventpipe."+topics.Tasks, k.ConsumerGroup(topics.Tasks))
	require.NoError(t, k.Ping(t.Context()))
}

// TestKafka_runs_keys_in_parallel_and_each_key_in_order hands records to
// many subscriptions that ack after a random pause: records of one key must
// never be in flight together and must start in publish order, while
// records of different keys overlap (more than one in flight per partition).
func TestKafka_runs_keys_in_parallel_and_each_key_in_order(t *testing.T) {
	t.Parallel()
	brokers := newKfake(t)
	k, _ := newTestKafka(t, brokers, nil)
	topic := "one-partition" // default_partitions: 1
	const keys, perKey, subs = 20, 25, 16
	var msgs []*message.Message
	for i := range perKey {
		for key := range keys {
			m := message.NewMessage(fmt.Sprintf("k%02d-%03d", key, i), []byte(fmt.Sprint(i)))
			m.Metadata.Set(task.MetaPartitionKey, fmt.Sprintf("key-%02d", key))
			msgs = append(msgs, m)
		}
	}
	require.NoError(t, k.Publisher().Publish(topic, msgs...))

	sub, err := k.Subscriber(topic)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var (
		mu        sync.Mutex
		started   = map[string][]string{}
		running   = map[string]bool{}
		inFlight  int
		peak      int
		overlap   []string
		remaining = len(msgs)
		allDone   = make(chan struct{})
	)
	for range subs {
		ch, err := sub.Subscribe(ctx, topic)
		require.NoError(t, err)
		go func() {
			for m := range ch {
				key := m.Metadata.Get(task.MetaPartitionKey)
				mu.Lock()
				if running[key] {
					overlap = append(overlap, m.UUID)
				}
				running[key] = true
				started[key] = append(started[key], m.UUID)
				inFlight++
				peak = max(peak, inFlight)
				mu.Unlock()
				time.Sleep(time.Duration(mrand.N(3)) * time.Millisecond)
				mu.Lock()
				running[key] = false
				inFlight--
				if remaining--; remaining == 0 {
					close(allDone)
				}
				mu.Unlock()
				m.Ack()
			}
		}()
	}
	select {
	case <-allDone:
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("%d of %d records not handled", remaining, len(msgs))
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Empty(t, overlap, "records of one key in flight together")
	assert.Greater(t, peak, 1, "records of different keys on one partition overlap")
	for key := range keys {
		ids := started[fmt.Sprintf("key-%02d", key)]
		require.Len(t, ids, perKey)
		for i, id := range ids {
			assert.Equal(t, fmt.Sprintf("k%02d-%03d", key, i), id)
		}
	}
}

func TestKafka_after_close_fails_ping_publish_and_subscribe(t *testing.T) {
	t.Parallel()
	k, topics := newTestKafka(t, newKfake(t), nil)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	sub, err := k.Subscriber(topics.Results)
	require.NoError(t, err)
	ch, err := sub.Subscribe(ctx, topics.Results)
	require.NoError(t, err)
	require.NoError(t, k.Publisher().Publish(topics.Results, message.NewMessage("first", nil)))
	select {
	case m := <-ch:
		m.Ack()
		assert.Equal(t, "first", m.UUID)
	case <-ctx.Done():
		t.Fatal("no message")
	}
	// Offsets are committed on an interval; close the broker to flush them.
	require.NoError(t, k.Close())
	assert.ErrorIs(t, k.Ping(t.Context()), ErrClosed)
	assert.Error(t, k.Publisher().Publish(topics.Results, message.NewMessage("late", nil)))
	_, err = k.Subscriber(topics.Results)
	assert.ErrorIs(t, err, ErrClosed)
}

func TestKafka_authenticates_with_SASL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		mechanism string
		password  string
		wantErr   bool
	}{
		{name: "PLAIN", mechanism: config.SASLPlain, password: "secret"},
		{name: "SCRAM-SHA-256", mechanism: config.SASLSCRAMSHA256, password: "secret"},
		{name: "SCRAM-SHA-512", mechanism: config.SASLSCRAMSHA512, password: "secret"},
		{name: "SCRAM-SHA-256 with a wrong password fails", mechanism: config.SASLSCRAMSHA256, password: "wrong", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			brokers := newKfake(t, kfake.EnableSASL(), kfake.Superuser(tt.mechanism, "app", "secret"))
			cfg := config.Default().Broker.Kafka
			cfg.Brokers = brokers
			cfg.SASL = config.SASL{Mechanism: tt.mechanism, Username: "app", Password: tt.password}
			k, err := NewKafka(cfg, testTopics(t), nil)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			defer k.Close()
			assert.NoError(t, k.Ping(t.Context()))
		})
	}
}

func TestKafka_connects_over_TLS_with_the_configured_CA(t *testing.T) {
	t.Parallel()
	caFile, serverCert := selfSignedCert(t)
	brokers := newKfake(t, kfake.TLS(&tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12}))

	cfg := config.Default().Broker.Kafka
	cfg.Brokers = brokers
	cfg.TLS = config.TLS{Enabled: true, CAFile: caFile}
	k, err := NewKafka(cfg, testTopics(t), nil)
	require.NoError(t, err)
	defer k.Close()
	assert.NoError(t, k.Ping(t.Context()))
}

// selfSignedCert writes a self-signed CA certificate for 127.0.0.1 to a file
// and returns its path and the matching server certificate.
func selfSignedCert(t *testing.T) (string, tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "eventpipe-test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(path, certPEM, 0o600))
	return path, cert
}

func TestKafka_backlog_is_consumer_lag_per_partition(t *testing.T) {
	t.Parallel()
	k, topics := newTestKafka(t, newKfake(t), func(c *config.Kafka) { c.Partitions = map[string]int{"unused": 1} })
	topic := topics.Results // 1 partition
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	sub, err := k.Subscriber(topic)
	require.NoError(t, err)
	ch, err := sub.Subscribe(ctx, topic)
	require.NoError(t, err)
	for i := range 5 {
		require.NoError(t, k.Publisher().Publish(topic, message.NewMessage(fmt.Sprint(i), nil)))
	}

	backlog, err := k.Backlog(ctx)
	require.NoError(t, err)
	assert.Equal(t, []Backlog{{Topic: topic, Partition: "0", Messages: 5}}, backlog, "nothing committed: everything waits")

	for range 5 {
		select {
		case m := <-ch:
			m.Ack()
		case <-ctx.Done():
			t.Fatal("messages not delivered")
		}
	}
	// Offsets are committed every second.
	assert.Eventually(t, func() bool {
		backlog, err := k.Backlog(ctx)
		return err == nil && len(backlog) == 1 && backlog[0].Messages == 0
	}, 10*time.Second, 100*time.Millisecond)
}

func TestKafka_publish_fails_fast_on_a_record_too_large(t *testing.T) {
	t.Parallel()
	k, topics := newTestKafka(t, newKfake(t), nil)
	start := time.Now()
	err := k.Publisher().Publish(topics.Results, message.NewMessage("big", make([]byte, 2<<20)))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "publish big to kafka topic "+topics.Results)
	assert.Less(t, time.Since(start), 5*time.Second, "not retried for the outage budget")
}

func TestKafka_poison_copy_too_large_for_the_cluster_is_cut_until_it_fits(t *testing.T) {
	t.Parallel()
	const limit = 1 << 20 // the cluster's message.max.bytes
	big := strings.Repeat("x", 2<<20)
	manyHeaders := map[string]string{}
	for i := range 400 { // 1.2 MiB of headers, each value under poisonKeepValueBytes
		manyHeaders[fmt.Sprintf("h-%03d", i)] = strings.Repeat("y", 3<<10)
	}
	tests := []struct {
		name    string
		payload []byte
		meta    map[string]string
		// wantPayloadCut is payload_truncated_bytes ("" = payload kept whole).
		wantPayloadCut string
		// wantMetaCut is the start of metadata_truncated ("" = metadata kept whole).
		wantMetaCut string
		check       func(t *testing.T, got message.Metadata)
	}{
		{
			name: "payload too large: only the payload is cut", payload: []byte(big),
			wantPayloadCut: "2097152",
		},
		{
			name: "headers alone too large: the large value is cut, the payload kept", payload: []byte(`{"id":"h"}`),
			meta:        map[string]string{"blob": big},
			wantMetaCut: "blob",
			check: func(t *testing.T, got message.Metadata) {
				assert.Equal(t, big[:poisonKeepValueBytes], got.Get("blob"))
			},
		},
		{
			name: "payload and headers both too large: both are cut", payload: []byte(big),
			meta:           map[string]string{"blob": big},
			wantPayloadCut: "2097152", wantMetaCut: "blob",
		},
		{
			name: "reason too large: the reason is cut and kept", payload: []byte(`{"id":"r"}`),
			meta:        map[string]string{MetaReasonPoisoned: "invalid JSON: " + big},
			wantMetaCut: MetaReasonPoisoned,
			check: func(t *testing.T, got message.Metadata) {
				assert.Len(t, got.Get(MetaReasonPoisoned), poisonKeepValueBytes)
				assert.True(t, strings.HasPrefix(got.Get(MetaReasonPoisoned), "invalid JSON: xxx"))
			},
		},
		{
			name: "many headers: the largest are dropped, the poison keys kept", payload: []byte(`{"id":"m"}`),
			meta:        manyHeaders,
			wantMetaCut: "h-",
			check: func(t *testing.T, got message.Metadata) {
				dropped := strings.Split(got.Get(MetaMetadataTruncated), ",")
				assert.NotEmpty(t, dropped)
				for _, k := range dropped {
					assert.NotContains(t, got, k)
				}
				assert.Len(t, got, len(manyHeaders)+7-len(dropped), "the others are kept")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			brokers := newKfake(t, kfake.BrokerConfigs(map[string]string{"message.max.bytes": strconv.Itoa(limit)}))
			k, topics := newTestKafka(t, brokers, nil)
			dlq := topics.Poison(topics.Events)
			msg := poisoned("p1", topics.Events, "permanent", "invalid JSON")
			msg.Payload = tt.payload
			for key, v := range tt.meta {
				msg.Metadata.Set(key, v)
			}

			sentPayload, sentMeta := msg.Payload, maps.Clone(msg.Metadata)
			require.NoError(t, k.Publisher().Publish(dlq, msg), "a poison copy must always get through")
			assert.True(t, bytes.Equal(sentPayload, msg.Payload) && maps.Equal(sentMeta, msg.Metadata),
				"a copy is cut, not the message being handled (a failed poison publish redelivers it)")

			got, _, err := k.ListPoison(t.Context(), dlq, 0)
			require.NoError(t, err)
			require.Len(t, got, 1)
			md := got[0].Message.Metadata
			assert.Equal(t, "p1", got[0].Message.UUID)
			assert.Equal(t, topics.Events, got[0].Origin())
			assert.Equal(t, "trigger", got[0].Handler())
			assert.Equal(t, "permanent", got[0].ReasonKind())
			assert.NotEmpty(t, got[0].Reason())
			assert.Equal(t, "key-p1", md.Get(task.MetaPartitionKey), "small metadata is kept")
			assert.Equal(t, tt.wantPayloadCut, md.Get(MetaPayloadTruncated))
			wantPayload := tt.payload
			if tt.wantPayloadCut != "" {
				wantPayload = tt.payload[:poisonKeepBytes]
			}
			assert.True(t, bytes.Equal(wantPayload, got[0].Message.Payload), "payload of %d bytes, want %d", len(got[0].Message.Payload), len(wantPayload))
			if tt.wantMetaCut == "" {
				assert.Empty(t, md.Get(MetaMetadataTruncated))
			} else {
				assert.True(t, strings.HasPrefix(md.Get(MetaMetadataTruncated), tt.wantMetaCut), md.Get(MetaMetadataTruncated))
			}
			if tt.check != nil {
				tt.check(t, md)
			}
		})
	}
}

func TestKafka_publish_of_an_ordinary_message_with_headers_too_large_fails(t *testing.T) {
	t.Parallel()
	k, topics := newTestKafka(t, newKfake(t), nil)
	msg := message.NewMessage("big-headers", []byte(`{}`))
	msg.Metadata.Set("blob", strings.Repeat("x", 2<<20))
	err := k.Publisher().Publish(topics.Results, msg)
	require.Error(t, err, "only poison copies are cut")
	assert.Contains(t, err.Error(), "publish big-headers to kafka topic "+topics.Results)
	assert.Len(t, msg.Metadata.Get("blob"), 2<<20)
}

func TestCutText_cuts_at_a_rune_boundary(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		n    int
		want string
	}{
		{name: "short text is kept", in: "abc", n: 5, want: "abc"},
		{name: "ASCII is cut at n", in: "abcdef", n: 3, want: "abc"},
		{name: "a rune across n is dropped whole", in: "ab€cd", n: 3, want: "ab"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, cutText(tt.in, tt.n))
		})
	}
}

// Shutdown as the pipeline does it: the router's context ends, the last
// handler acks, and the broker is closed right after. The acked message's
// offset must be committed, or it runs again after the restart.
func TestKafka_message_acked_right_before_close_is_not_redelivered(t *testing.T) {
	t.Parallel()
	brokers := newKfake(t)
	for trial := range 3 {
		topics := testTopics(t)
		cfg := config.Default().Broker.Kafka
		cfg.Brokers = brokers
		cfg.Partitions = map[string]int{topics.Events: 1}
		open := func() *Kafka {
			k, err := NewKafka(cfg, topics, watermill.NopLogger{})
			require.NoError(t, err)
			return k
		}
		k := open()
		for _, id := range []string{"m0", "m1"} {
			require.NoError(t, k.Publisher().Publish(topics.Events, message.NewMessage(id, []byte("x"))))
		}
		sub, err := k.Subscriber(topics.Events)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(t.Context())
		ch, err := sub.Subscribe(ctx, topics.Events)
		require.NoError(t, err)
		m := <-ch
		require.Equal(t, "m0", m.UUID)
		cancel() // the router closes; the handler is still running
		m.Ack()
		require.NoError(t, k.Close())

		k = open()
		sub, err = k.Subscriber(topics.Events)
		require.NoError(t, err)
		ch, err = sub.Subscribe(t.Context(), topics.Events)
		require.NoError(t, err)
		select {
		case m = <-ch:
			assert.Equal(t, "m1", m.UUID, "trial %d: the message acked before Close came again", trial)
			m.Ack()
		case <-time.After(20 * time.Second):
			t.Fatal("nothing delivered after the restart")
		}
		require.NoError(t, k.Close())
	}
}

// TestKafka_records_finished_above_an_unfinished_one_do_not_run_again: with
// many records in flight, a graceful stop can leave finished records above
// one still running (the committed offset cannot pass it). After a restart
// only the unfinished one comes again: the commit metadata lists the others.
func TestKafka_records_finished_above_an_unfinished_one_do_not_run_again(t *testing.T) {
	t.Parallel()
	brokers := newKfake(t)
	topics := testTopics(t)
	cfg := config.Default().Broker.Kafka
	cfg.Brokers = brokers
	cfg.Partitions = map[string]int{topics.Events: 1}
	open := func() *Kafka {
		k, err := NewKafka(cfg, topics, watermill.NopLogger{})
		require.NoError(t, err)
		return k
	}
	k := open()
	const n = 6
	for i := range n {
		require.NoError(t, k.Publisher().Publish(topics.Events, message.NewMessage(fmt.Sprintf("m%d", i), []byte("x"))))
	}
	sub, err := k.Subscriber(topics.Events)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	var chs []<-chan *message.Message
	for range n {
		ch, err := sub.Subscribe(ctx, topics.Events)
		require.NoError(t, err)
		chs = append(chs, ch)
	}
	got := map[string]*message.Message{}
	for _, ch := range chs {
		select {
		case m := <-ch:
			got[m.UUID] = m
		case <-time.After(20 * time.Second):
			t.Fatalf("got %d of %d records in flight", len(got), n)
		}
	}
	for id, m := range got {
		if id != "m1" && id != "m4" {
			m.Ack()
		}
	}
	cancel()
	got["m1"].Nack() // cut off by the shutdown; m4 is still running at Close
	require.NoError(t, k.Close())

	k = open()
	defer k.Close()
	sub, err = k.Subscriber(topics.Events)
	require.NoError(t, err)
	ch, err := sub.Subscribe(t.Context(), topics.Events)
	require.NoError(t, err)
	var again []string
	for range 2 {
		select {
		case m := <-ch:
			again = append(again, m.UUID)
			m.Ack()
		case <-time.After(20 * time.Second):
			t.Fatalf("after the restart got %v, want m1 and m4", again)
		}
	}
	assert.Equal(t, []string{"m1", "m4"}, again)
	select {
	case m := <-ch:
		t.Fatalf("%s finished before the restart and came again", m.UUID)
	case <-time.After(2 * time.Second):
	}
}

// TestKafka_reports_topics_it_owns_no_partition_of: of two processes in one
// group on a one-partition topic, exactly one owns it; the other reports the
// topic unassigned (readiness says why it takes nothing).
func TestKafka_reports_topics_it_owns_no_partition_of(t *testing.T) {
	t.Parallel()
	brokers := newKfake(t)
	topics := testTopics(t)
	cfg := config.Default().Broker.Kafka
	cfg.Brokers = brokers
	topic := "one-partition-" + watermill.NewShortUUID()
	var ks []*Kafka
	for range 2 {
		k, err := NewKafka(cfg, topics, watermill.NopLogger{})
		require.NoError(t, err)
		t.Cleanup(func() { _ = k.Close() })
		sub, err := k.Subscriber(topic)
		require.NoError(t, err)
		_, err = sub.Subscribe(t.Context(), topic)
		require.NoError(t, err)
		ks = append(ks, k)
	}
	require.Eventually(t, func() bool {
		var unassigned [][]string
		for _, k := range ks {
			u, err := k.Unassigned(t.Context())
			require.NoError(t, err)
			unassigned = append(unassigned, u)
		}
		return (len(unassigned[0]) == 0) != (len(unassigned[1]) == 0)
	}, 30*time.Second, 100*time.Millisecond, "exactly one process owns the partition")
	for _, k := range ks {
		if u, _ := k.Unassigned(t.Context()); len(u) > 0 {
			assert.Equal(t, []string{topic}, u)
		}
	}
}

// TestKafka_publishes_records_as_large_as_the_cluster_takes: the producer's
// batch limit is the broker's message.max.bytes (a topic without its own
// max.message.bytes enforces that), not Kafka's 1 MiB default.
func TestKafka_publishes_records_as_large_as_the_cluster_takes(t *testing.T) {
	t.Parallel()
	k, topics := newTestKafka(t, newKfake(t, kfake.BrokerConfigs(map[string]string{"message.max.bytes": strconv.Itoa(8 << 20)})), nil)
	require.NoError(t, k.Publisher().Publish(topics.Results, message.NewMessage("big", make([]byte, 2<<20))))
}
