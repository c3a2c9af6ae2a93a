package broker

import (
	"cmp"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kerr"
)

const (
	// poisonKeepBytes is how much of a payload a poison copy keeps when the
	// cluster refuses the whole record as too large.
	poisonKeepBytes = 64 << 10
	// poisonKeepValueBytes bounds each metadata value (reason_poisoned
	// included) of a poison copy refused as too large even with its payload
	// cut, and poisonKeepMetadataBytes the keys and values of its other
	// metadata together: with the payload cut too, the copy stays far below
	// any usable message.max.bytes (Kafka's default is 1 MiB).
	poisonKeepValueBytes    = 4 << 10
	poisonKeepMetadataBytes = 64 << 10
)

// MetaPayloadTruncated on a poison message holds the original payload size
// when the broker refused the whole message and only its start was kept.
const MetaPayloadTruncated = "payload_truncated_bytes"

// MetaMetadataTruncated on a poison message lists, comma-separated, the
// metadata keys whose values were cut or that were dropped because the
// broker refused the message as too large even with its payload cut.
const MetaMetadataTruncated = "metadata_truncated"

// truncateForPoison shrinks a poison message the cluster refused as too
// large, so that the failure is still recorded with its reason and the
// partition moves on instead of redelivering the message forever. First the
// payload is cut to its first poisonKeepBytes (payload_truncated_bytes says
// how big it was); if the record is still refused, its headers are what is
// too large and the metadata is cut (see truncatePoisonMetadata). It reports
// whether it changed msg: each step runs once, then Publish gives up.
func truncateForPoison(msg *message.Message, err error) bool {
	if !errors.Is(err, kerr.MessageTooLarge) || msg.Metadata.Get(MetaReasonPoisoned) == "" {
		return false
	}
	if len(msg.Payload) > poisonKeepBytes {
		msg.Metadata.Set(MetaPayloadTruncated, strconv.Itoa(len(msg.Payload)))
		msg.Payload = msg.Payload[:poisonKeepBytes]
		return true
	}
	return truncatePoisonMetadata(msg)
}

// truncatePoisonMetadata bounds the metadata of a poison message. The keys
// that say why it was poisoned (PoisonMetadataKeys and the truncation
// marks) are always kept, each value cut to poisonKeepValueBytes. Of the
// others, the smallest are kept first, each value cut the same way, while
// they fit in poisonKeepMetadataBytes; the rest are dropped. The keys cut or
// dropped are listed in metadata_truncated. It reports whether it changed
// msg: a second call finds nothing left to cut.
func truncatePoisonMetadata(msg *message.Message) bool {
	kept := func(k string) bool {
		return slices.Contains(PoisonMetadataKeys, k) || k == MetaPayloadTruncated || k == MetaMetadataTruncated
	}
	size := func(k string) int { return len(k) + min(len(msg.Metadata[k]), poisonKeepValueBytes) }
	keys := slices.SortedFunc(maps.Keys(msg.Metadata), func(a, b string) int {
		return cmp.Or(cmp.Compare(size(a), size(b)), cmp.Compare(a, b))
	})
	var cut []string
	used := 0
	for _, k := range keys {
		if !kept(k) {
			if used+size(k) > poisonKeepMetadataBytes {
				delete(msg.Metadata, k)
				cut = append(cut, k)
				continue
			}
			used += size(k)
		}
		if v := msg.Metadata[k]; len(v) > poisonKeepValueBytes {
			msg.Metadata[k] = cutText(v, poisonKeepValueBytes)
			cut = append(cut, k)
		}
	}
	if len(cut) == 0 {
		return false
	}
	slices.Sort(cut)
	msg.Metadata.Set(MetaMetadataTruncated, cutText(strings.Join(cut, ","), poisonKeepValueBytes))
	return true
}

// cutText returns s cut to at most n bytes at a rune boundary: metadata is
// text (reason_poisoned is shown by eventpipe dlq list), keep it valid UTF-8.
func cutText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
