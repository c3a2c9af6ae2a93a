// Command kfake runs franz-go's kfake Kafka broker as a process of its own,
// so the fault suite can stop and restart the broker under a running
// pipeline and inject broker-side failures.
//
//	kfake -port 9092 -data-dir DIR [-control 127.0.0.1:0] [-max-message-bytes N]
//
// With -data-dir the broker keeps topics, records and committed offsets
// across restarts (saved on SIGTERM/SIGINT; a SIGKILL loses what the page
// cache held, like a real broker without fsync).
//
// -control serves fault injection over HTTP:
//
//	PUT    /faults/produce?topic=T   from now on, refuse every produce to T
//	                                  with NOT_ENOUGH_REPLICAS (retriable:
//	                                  what a broker answers while a topic
//	                                  has fewer in-sync replicas than
//	                                  min.insync.replicas)
//	DELETE /faults/produce?topic=T   accept produces to T again
//
// It removes group members that died while they joined, as Kafka's session
// timeout does and kfake does not (see reaper).
//
// It prints "kfake listening on HOST:PORT control HOST:PORT" once ready.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "kfake: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	port := flag.Int("port", 0, "Kafka listen port on 127.0.0.1 (0 = any free port)")
	dataDir := flag.String("data-dir", "", "persist topics, records and offsets here across restarts")
	control := flag.String("control", "", "listen address of the fault-injection HTTP API (\"\" = none)")
	maxMessage := flag.Int("max-message-bytes", 0, "broker message.max.bytes (0 = kfake's default, about 1 MiB)")
	flag.Parse()
	if *port < 0 || *port > 65535 {
		return fmt.Errorf("-port must be 0..65535, got %d", *port)
	}
	if *maxMessage < 0 {
		return fmt.Errorf("-max-message-bytes must be >= 0, got %d", *maxMessage)
	}
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.Ports(*port)}
	if *dataDir != "" {
		opts = append(opts, kfake.DataDir(*dataDir))
	}
	if *maxMessage > 0 {
		opts = append(opts, kfake.BrokerConfigs(map[string]string{"message.max.bytes": strconv.Itoa(*maxMessage)}))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return fmt.Errorf("start cluster: %w", err)
	}
	defer c.Close()
	reap, err := newReaper(c)
	if err != nil {
		return fmt.Errorf("start reaper: %w", err)
	}
	reapCtx, stopReap := context.WithCancel(context.Background())
	defer stopReap()
	go reap.run(reapCtx)

	controlAddr := "-"
	if *control != "" {
		ln, err := net.Listen("tcp", *control)
		if err != nil {
			return fmt.Errorf("-control %s: %w", *control, err)
		}
		controlAddr = ln.Addr().String()
		srv := &http.Server{Handler: newController(c)}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
	}
	fmt.Printf("kfake listening on %s control %s\n", c.ListenAddrs()[0], controlAddr)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	return nil // deferred Close saves the data directory
}

// controller installs and removes produce faults by topic.
type controller struct {
	c      *kfake.Cluster
	mu     sync.Mutex
	active map[string]*kfake.FaultHandle
}

func newController(c *kfake.Cluster) http.Handler {
	ctl := &controller{c: c, active: map[string]*kfake.FaultHandle{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/faults/produce", ctl.produce)
	return mux
}

func (ctl *controller) produce(w http.ResponseWriter, r *http.Request) {
	topic := r.URL.Query().Get("topic")
	if topic == "" {
		http.Error(w, "query parameter topic is required", http.StatusBadRequest)
		return
	}
	ctl.mu.Lock()
	defer ctl.mu.Unlock()
	switch r.Method {
	case http.MethodPut:
		if ctl.active[topic] == nil {
			ctl.active[topic] = ctl.c.Fault(kfake.Fault{
				Keys:  []kmsg.Key{kmsg.Produce},
				Topic: topic,
				Err:   kerr.NotEnoughReplicas,
				Count: -1,
			})
		}
		fmt.Fprintf(w, "refusing produce to %s\n", topic)
	case http.MethodDelete:
		h := ctl.active[topic]
		if h == nil {
			http.Error(w, "no fault on topic "+topic, http.StatusNotFound)
			return
		}
		hits := h.Hits()
		h.Remove()
		delete(ctl.active, topic)
		fmt.Fprintf(w, "accepting produce to %s again after refusing %d requests\n", topic, hits)
	default:
		http.Error(w, "use PUT or DELETE", http.StatusMethodNotAllowed)
	}
}
