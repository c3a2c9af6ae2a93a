package broker

import (
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCorkedConn_delivers_every_write_in_order_and_flushes_at_close(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		writers int
		writes  int
	}{
		{name: "one writer", writers: 1, writes: 1000},
		{name: "many writers", writers: 8, writes: 500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			client, server := net.Pipe()
			cc := newCorkedConn(client)
			got := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(server)
				got <- b
			}()
			var wg sync.WaitGroup
			for w := range tt.writers {
				wg.Go(func() {
					for i := range tt.writes {
						// One frame per write: a writer's frames stay whole and in order.
						_, err := cc.Write([]byte{byte('a' + w), byte(i), byte(i >> 8), '\n'})
						assert.NoError(t, err)
					}
				})
			}
			wg.Wait()
			require.NoError(t, cc.Close())
			out := <-got
			require.Len(t, out, tt.writers*tt.writes*4)
			next := make([]int, tt.writers)
			for frame := range slices.Chunk(out, 4) {
				w := int(frame[0] - 'a')
				assert.Equal(t, next[w], int(frame[1])|int(frame[2])<<8, "writer %d out of order", w)
				next[w]++
			}
		})
	}
}

func TestCorkedConn_write_after_a_failed_flush_fails(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	require.NoError(t, server.Close())
	cc := newCorkedConn(client)
	_, _ = cc.Write([]byte("x"))
	require.Eventually(t, func() bool {
		_, err := cc.Write([]byte("y"))
		return err != nil
	}, time.Second, time.Millisecond)
	_ = cc.Close()
}
