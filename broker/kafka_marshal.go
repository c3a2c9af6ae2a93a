package broker

import (
	"fmt"
	"strconv"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventpipe/eventpipe/task"
)

// kafkaMarshaler maps Watermill messages to Kafka records and back.
//
// Marshal writes the message UUID and every metadata entry as record
// headers (Watermill's layout, so other Watermill services read our records)
// and uses metadata partition_key as the record key: records with the same
// key land on the same partition and keep their order. Without a key the
// partitioner spreads records over every partition.
//
// Unmarshal accepts records from any producer (kcat, Java clients): with no
// Watermill UUID header the UUID is derived from topic/partition/offset, so
// it is stable across redeliveries and names the record in poison topics. A
// record key without a partition_key header becomes partition_key, so a
// foreign record keeps its key when it is poisoned and replayed. Unmarshal
// never fails: watermill-kafka stops the partition's consumer on an
// unmarshal error.
type kafkaMarshaler struct{}

var _ kafka.MarshalerUnmarshaler = kafkaMarshaler{}

func (kafkaMarshaler) Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	if msg.Metadata.Get(kafka.UUIDHeaderKey) != "" {
		return nil, fmt.Errorf("metadata %s is reserved for the message UUID", kafka.UUIDHeaderKey)
	}
	headers := make([]sarama.RecordHeader, 0, len(msg.Metadata)+1)
	headers = append(headers, sarama.RecordHeader{Key: []byte(kafka.UUIDHeaderKey), Value: []byte(msg.UUID)})
	for k, v := range msg.Metadata {
		headers = append(headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
	}
	pm := &sarama.ProducerMessage{Topic: topic, Value: sarama.ByteEncoder(msg.Payload), Headers: headers}
	if key := msg.Metadata.Get(task.MetaPartitionKey); key != "" {
		pm.Key = sarama.StringEncoder(key)
	}
	return pm, nil
}

func (kafkaMarshaler) Unmarshal(rec *sarama.ConsumerMessage) (*message.Message, error) {
	var id string
	md := make(message.Metadata, len(rec.Headers)+1)
	for _, h := range rec.Headers {
		if h == nil {
			continue
		}
		if string(h.Key) == kafka.UUIDHeaderKey {
			id = string(h.Value)
			continue
		}
		md[string(h.Key)] = string(h.Value)
	}
	if id == "" {
		id = foreignRecordID(rec.Topic, rec.Partition, rec.Offset)
	}
	if len(rec.Key) > 0 && md[task.MetaPartitionKey] == "" {
		md[task.MetaPartitionKey] = string(rec.Key)
	}
	msg := message.NewMessage(id, rec.Value)
	msg.Metadata = md
	return msg, nil
}

// foreignRecordID names a record that carries no Watermill UUID by its
// position, which never changes: "kafka:business-events:3:1042".
func foreignRecordID(topic string, partition int32, offset int64) string {
	return "kafka:" + topic + ":" + strconv.FormatInt(int64(partition), 10) + ":" + strconv.FormatInt(offset, 10)
}
