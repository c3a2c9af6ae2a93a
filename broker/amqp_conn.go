package broker

import (
	"net"
	"sync"
	"time"
)

// amqpCorkBytes bounds what a corked connection buffers before Write
// blocks: when RabbitMQ stops reading (connection.blocked), writers stop
// here rather than grow the buffer.
const amqpCorkBytes = 4 << 20

// corkedConn is a net.Conn whose writes are gathered and sent by one
// flusher goroutine: what callers write while the flusher is in a write
// syscall goes out together in the next one.
//
// Why by hand: amqp091-go flushes after every frame group (each publish,
// each ack is one write syscall), which the profile showed as a
// fifth of eventpipe's CPU, and it has no batching option. Gathering at
// the socket batches every kind of frame (publishes, acks, nacks) from
// every channel without adding latency when idle: the first write wakes
// the flusher at once.
//
// A write error is returned to the next Write (and the flusher stops);
// amqp091 then closes the connection as it would on a failed write.
type corkedConn struct {
	net.Conn

	mu      sync.Mutex
	cond    *sync.Cond // signalled when buf gains data, drains, or err is set
	buf     []byte
	spare   []byte
	err     error
	writing bool
}

func newCorkedConn(c net.Conn) *corkedConn {
	cc := &corkedConn{Conn: c}
	cc.cond = sync.NewCond(&cc.mu)
	go cc.flush()
	return cc
}

// amqpDialTimeout bounds connecting and the TLS and AMQP handshakes: a
// RabbitMQ that accepts TCP connections but does not answer (while its
// application starts or stops) must not hold a dialler forever.
const amqpDialTimeout = 10 * time.Second

// dialCorked dials like amqp091's default dialer, with a deadline for the
// handshakes that amqp091 clears once the connection is open, and corks
// the connection.
func dialCorked(network, addr string) (net.Conn, error) {
	c, err := net.DialTimeout(network, addr, amqpDialTimeout)
	if err != nil {
		return nil, err
	}
	if err := c.SetDeadline(time.Now().Add(amqpDialTimeout)); err != nil {
		_ = c.Close()
		return nil, err
	}
	return newCorkedConn(c), nil
}

// Write queues p; it blocks only while amqpCorkBytes are queued.
func (c *corkedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && len(c.buf) > 0 && len(c.buf)+len(p) > amqpCorkBytes {
		c.cond.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	wake := len(c.buf) == 0
	c.buf = append(c.buf, p...)
	if wake {
		c.cond.Broadcast()
	}
	return len(p), nil
}

// flush writes whatever is queued, one syscall per batch, until an error
// or Close.
func (c *corkedConn) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for len(c.buf) == 0 && c.err == nil {
			c.cond.Wait()
		}
		if c.err != nil {
			return
		}
		out := c.buf
		c.buf = c.spare[:0]
		c.writing = true
		c.cond.Broadcast() // room again for blocked writers
		c.mu.Unlock()
		_, err := c.Conn.Write(out)
		c.mu.Lock()
		c.writing = false
		c.spare = out[:0]
		if err != nil && c.err == nil {
			c.err = err
		}
		c.cond.Broadcast()
	}
}

// Close sends what is queued, for at most a second (a blocked peer must
// not hold Close), and closes the socket.
func (c *corkedConn) Close() error {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	c.mu.Lock()
	for c.err == nil && (len(c.buf) > 0 || c.writing) {
		c.cond.Wait()
	}
	if c.err == nil {
		c.err = net.ErrClosed
	}
	c.cond.Broadcast()
	c.mu.Unlock()
	return c.Conn.Close()
}
