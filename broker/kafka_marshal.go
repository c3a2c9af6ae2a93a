package broker

import (
	"fmt"
	"strconv"
	"unsafe"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventpipe/eventpipe/task"
)

// KafkaUUIDHeader is the record header carrying the Watermill message UUID,
// named as watermill-kafka names it, so Watermill services and eventpipe
// read each other's records.
const KafkaUUIDHeader = "_watermill_message_uuid"

// marshalRecord maps a Watermill message to a Kafka record: the UUID and
// every metadata entry become headers (Watermill's layout), and metadata
// partition_key becomes the record key, so records with the same key land
// on the same partition and keep their order. Without a key the
// partitioner spreads records over every partition.
func marshalRecord(topic string, msg *message.Message) (*kgo.Record, error) {
	if msg.Metadata.Get(KafkaUUIDHeader) != "" {
		return nil, fmt.Errorf("metadata %s is reserved for the message UUID", KafkaUUIDHeader)
	}
	headers := make([]kgo.RecordHeader, 0, len(msg.Metadata)+1)
	headers = append(headers, kgo.RecordHeader{Key: KafkaUUIDHeader, Value: stringBytes(msg.UUID)})
	for k, v := range msg.Metadata {
		headers = append(headers, kgo.RecordHeader{Key: k, Value: stringBytes(v)})
	}
	rec := &kgo.Record{Topic: topic, Value: msg.Payload, Headers: headers}
	if key := msg.Metadata.Get(task.MetaPartitionKey); key != "" {
		rec.Key = stringBytes(key)
	}
	return rec, nil
}

// stringBytes views s as bytes without copying it: a record's header values
// are only read (encoded into the produce request), and a copy of each of a
// message's metadata values was a third of the allocations of producing it.
func stringBytes(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// unmarshalRecord maps a record from any producer (kcat, Java clients,
// watermill-kafka) to a Watermill message. With no UUID header the UUID is
// derived from topic/partition/offset, so it is stable across redeliveries
// and names the record in poison topics. A record key without a
// partition_key header becomes partition_key, so a foreign record keeps its
// key when it is poisoned and replayed. It never fails: a record is never
// stuck for its form.
func unmarshalRecord(rec *kgo.Record) *message.Message {
	// One string holds every header value, each a substring of it: one
	// allocation per record instead of one per header. It holds nothing
	// else, so a value kept long (a task id in the de-duplication store)
	// keeps only this record's header values alive, not the fetch buffer.
	size := 0
	for _, h := range rec.Headers {
		size += len(h.Value)
	}
	buf := make([]byte, 0, size)
	for _, h := range rec.Headers {
		buf = append(buf, h.Value...)
	}
	values := unsafe.String(unsafe.SliceData(buf), len(buf)) // buf is never written again
	var id string
	md := make(message.Metadata, len(rec.Headers)+1)
	at := 0
	for _, h := range rec.Headers {
		v := values[at : at+len(h.Value)]
		at += len(h.Value)
		if h.Key == KafkaUUIDHeader {
			id = v
			continue
		}
		md[h.Key] = v
	}
	if id == "" {
		id = foreignRecordID(rec.Topic, rec.Partition, rec.Offset)
	}
	if len(rec.Key) > 0 && md[task.MetaPartitionKey] == "" {
		md[task.MetaPartitionKey] = string(rec.Key)
	}
	msg := message.NewMessage(id, rec.Value)
	msg.Metadata = md
	return msg
}

// foreignRecordID names a record that carries no Watermill UUID by its
// position, which never changes: "kafka:business-events:3:1042".
func foreignRecordID(topic string, partition int32, offset int64) string {
	return "kafka:" + topic + ":" + strconv.FormatInt(int64(partition), 10) + ":" + strconv.FormatInt(offset, 10)
}
