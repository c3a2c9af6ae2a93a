package history

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// AddPoison keeps a poison message: the embedded broker has no durable
// poison topic, so the history is where `dlq list` and replay find it.
func (s *Store) AddPoison(ctx context.Context, topic, uuid string, payload []byte, metadata map[string]string) error {
	md, err := json.Marshal(metadata)
	if err != nil {
		return err
	}
	if payload == nil {
		payload = []byte{}
	}
	_, err = s.db.ExecContext(ctx, s.q(`INSERT INTO poison_messages (topic, uuid, payload, metadata, poisoned_at)
		VALUES (?, ?, ?, ?, ?)`), topic, uuid, payload, string(md), time.Now().UnixMicro())
	if err != nil {
		return fmt.Errorf("keep poison message %s of %s: %w", uuid, topic, err)
	}
	return nil
}

// ListPoison returns up to limit (0 = all) poison messages of topic, oldest
// first, and how many there are.
func (s *Store) ListPoison(ctx context.Context, topic string, limit int) ([]PoisonMessage, int, error) {
	var waiting int
	if err := s.db.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM poison_messages WHERE topic = ?`), topic).Scan(&waiting); err != nil {
		return nil, 0, fmt.Errorf("count poison messages of %s: %w", topic, err)
	}
	query := `SELECT id, topic, uuid, payload, metadata, poisoned_at FROM poison_messages WHERE topic = ? ORDER BY id`
	if limit > 0 {
		query += " LIMIT " + strconv.Itoa(limit)
	}
	rows, err := s.db.QueryContext(ctx, s.q(query), topic)
	if err != nil {
		return nil, 0, fmt.Errorf("list poison messages of %s: %w", topic, err)
	}
	defer rows.Close()
	var out []PoisonMessage
	for rows.Next() {
		var m PoisonMessage
		var md string
		var at int64
		if err := rows.Scan(&m.ID, &m.Topic, &m.UUID, &m.Payload, &md, &at); err != nil {
			return nil, 0, err
		}
		if err := json.Unmarshal([]byte(md), &m.Metadata); err != nil {
			return nil, 0, fmt.Errorf("decode metadata of poison message %d: %w", m.ID, err)
		}
		m.PoisonedAt = fromMicros(at)
		out = append(out, m)
	}
	return out, waiting, rows.Err()
}

// DeletePoison removes the poison message with id (after its replay).
func (s *Store) DeletePoison(ctx context.Context, id int64) error {
	if _, err := s.db.ExecContext(ctx, s.q(`DELETE FROM poison_messages WHERE id = ?`), id); err != nil {
		return fmt.Errorf("remove poison message %d: %w", id, err)
	}
	return nil
}
