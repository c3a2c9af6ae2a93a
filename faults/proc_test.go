//go:build faults

package faults_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startTimeout bounds how long a child process may take to be ready.
const startTimeout = 60 * time.Second

// proc is a child process with its output in a log file.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process exited
	exitErr error         // valid after done
}

// startProc starts bin with args, its stdout and stderr appended to
// logPath; every line also goes to onLine (may be nil) until it returns
// false. The child dies with the test process (Pdeathsig) and with t.
func startProc(t *testing.T, name, logPath string, onLine func(string) bool, bin string, args ...string) *proc {
	t.Helper()
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatalf("%s: log file: %v", name, err)
	}
	pr, pw := io.Pipe()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
		watching := onLine != nil
		for sc.Scan() {
			line := sc.Text()
			_, _ = logFile.WriteString(line + "\n")
			if watching {
				watching = onLine(line)
			}
		}
		_, _ = io.Copy(logFile, pr) // a line beyond the buffer: keep the rest
		_ = logFile.Close()
	}()
	go func() {
		p.exitErr = cmd.Wait()
		_ = pw.Close()
		close(p.done)
	}()
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits until the process is gone.
func (p *proc) kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// term sends SIGTERM and waits up to limit for the exit; it returns how
// long the process took, or an error if it had to be killed.
func (p *proc) term(limit time.Duration) (time.Duration, error) {
	start := time.Now()
	if p.exited() {
		return 0, fmt.Errorf("%s had already exited: %v", p.name, p.exitErr)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return time.Since(start), p.exitErr
	case <-time.After(limit):
		p.kill()
		return time.Since(start), fmt.Errorf("%s did not exit within %s of SIGTERM; killed", p.name, limit)
	}
}

// tail returns the last n lines of the log, for failure messages.
func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// pipeline is one `eventpipe run` child.
type pipeline struct {
	*proc
	addr string // HTTP address, once running
}

// startPipeline runs `eventpipe run --config cfgPath` and waits until its
// router consumes ("eventpipe running", which names the HTTP address).
func startPipeline(t *testing.T, name, cfgPath, logPath string) *pipeline {
	t.Helper()
	ready := make(chan string, 1)
	p := startProc(t, name, logPath, func(line string) bool {
		var rec struct {
			Msg      string `json:"msg"`
			HTTPAddr string `json:"http_addr"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "eventpipe running" {
			ready <- rec.HTTPAddr
			return false
		}
		return true
	}, eventpipeBin, "run", "--config", cfgPath)
	select {
	case addr := <-ready:
		return &pipeline{proc: p, addr: addr}
	case <-p.done:
		t.Fatalf("%s exited at start: %v\n%s", name, p.exitErr, p.tail(30))
	case <-time.After(startTimeout):
		t.Fatalf("%s not running after %s\n%s", name, startTimeout, p.tail(30))
	}
	return nil
}

// metric sums the samples of a Prometheus metric whose labels contain
// every one of match (`handler="trigger"`), from the pipeline's /metrics.
func (p *pipeline) metric(t *testing.T, name string, match ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", p.name, err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if !strings.HasPrefix(rest, "{") && !strings.HasPrefix(rest, " ") {
			continue // a longer name with this prefix
		}
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(rest, m)
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(rest[strings.LastIndexByte(rest, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// logCount counts the log lines of the pipeline whose msg is msg.
func (p *proc) logCount(msg string) int {
	b, _ := os.ReadFile(p.logPath)
	return bytes.Count(b, []byte(`"msg":`+strconv.Quote(msg)))
}

// kfakeProc is a kfake broker process that can be stopped and restarted
// on the same port with the same data directory.
type kfakeProc struct {
	t        *testing.T
	dir      string
	logPath  string
	maxBytes int
	mu       sync.Mutex
	p        *proc
	port     int
	addr     string // Kafka listen address
	control  string // fault-injection HTTP address
}

func startKfake(t *testing.T, dir string, maxMessageBytes int) *kfakeProc {
	t.Helper()
	k := &kfakeProc{t: t, dir: dir, logPath: dir + "/kfake.log", maxBytes: maxMessageBytes}
	k.start()
	return k
}

func (k *kfakeProc) start() {
	k.t.Helper()
	ready := make(chan string, 1)
	p := startProc(k.t, "kfake", k.logPath, func(line string) bool {
		if strings.HasPrefix(line, "kfake listening on ") {
			ready <- line
			return false
		}
		return true
	}, kfakeBin, "-port", strconv.Itoa(k.port), "-data-dir", k.dir+"/data", "-control", "127.0.0.1:0",
		"-max-message-bytes", strconv.Itoa(k.maxBytes))
	select {
	case line := <-ready:
		// "kfake listening on HOST:PORT control HOST:PORT"
		f := strings.Fields(line)
		k.mu.Lock()
		k.p, k.addr, k.control = p, f[3], f[5]
		_, port, _ := strings.Cut(k.addr, ":")
		k.port, _ = strconv.Atoi(port)
		k.mu.Unlock()
	case <-p.done:
		k.t.Fatalf("kfake exited at start: %v\n%s", p.exitErr, p.tail(20))
	case <-time.After(startTimeout):
		k.t.Fatalf("kfake not listening after %s", startTimeout)
	}
}

// restart stops the broker (SIGTERM: it saves its data), keeps it down for
// down, and starts it again on the same port.
func (k *kfakeProc) restart(down time.Duration) error {
	k.mu.Lock()
	p := k.p
	k.mu.Unlock()
	if _, err := p.term(30 * time.Second); err != nil {
		return fmt.Errorf("stop kfake: %w", err)
	}
	time.Sleep(down)
	k.start()
	return nil
}

// refuseProduce makes the broker refuse (on) or accept again (off) every
// produce request to topic; it returns the broker's answer.
func (k *kfakeProc) refuseProduce(topic string, on bool) (string, error) {
	method := http.MethodDelete
	if on {
		method = http.MethodPut
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+k.control+"/faults/produce?topic="+topic, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", errors.New(resp.Status + ": " + strings.TrimSpace(string(body)))
	}
	return strings.TrimSpace(string(body)), nil
}

// cli runs the eventpipe binary to completion and returns its exit code
// and output.
func cli(t *testing.T, timeout time.Duration, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, eventpipeBin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("eventpipe %s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("eventpipe %s did not finish within %s: %s", strings.Join(args, " "), timeout, errOut.String())
	}
	return code, out.String(), errOut.String()
}
