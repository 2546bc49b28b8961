package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// idleConns are raw MQTT connections that only keep alive: no goroutine
// each, so the process's RSS grows by what the broker spends on them.
type idleConns struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (ic *idleConns) len() int {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	return len(ic.conns)
}

func (ic *idleConns) close() {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	for _, c := range ic.conns {
		_ = c.Close()
	}
	ic.conns = nil
}

// keepAlive sends each connection a PINGREQ every interval (the answers
// pile up unread: 2 bytes each). The returned function stops it.
func (ic *idleConns) keepAlive(ctx context.Context, every time.Duration) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			ic.mu.Lock()
			for _, c := range ic.conns {
				_ = c.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = c.Write([]byte{0xC0, 0})
			}
			ic.mu.Unlock()
		}
	}()
	return func() { cancel(); <-done }
}

// openIdle connects one raw MQTT 3.1.1 connection per device, 64 at a time,
// from loopback addresses 127.0.0.1-sources. It returns the connections, the
// time they took, each CONNECT→CONNACK time in ms (sorted), and how many the
// broker refused (they are reported, not fatal). A socket error is fatal.
func openIdle(ctx context.Context, addr, slug string, keys []string, secret string, sources int) (*idleConns, time.Duration, []float32, int, error) {
	ic := &idleConns{conns: make([]net.Conn, 0, len(keys))}
	lat := make([]float32, len(keys))
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	var refused atomic.Int64
	start := time.Now()
	for i, k := range keys {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			t0 := time.Now()
			c, code, err := rawConnect(addr, net.IPv4(127, 0, 0, byte(1+i%sources)), k+"@"+slug, secret, 120)
			// 2 (identifier rejected): the broker has not yet forgotten
			// this client id's previous connection; try again shortly.
			for try := 0; try < 20 && err == nil && code == 2; try++ {
				c.Close()
				sleepCtx(ctx, 250*time.Millisecond)
				c, code, err = rawConnect(addr, net.IPv4(127, 0, 0, byte(1+i%sources)), k+"@"+slug, secret, 120)
			}
			if err == nil && code != 0 {
				c.Close()
				if refused.Add(1) <= 3 {
					fmt.Fprintf(os.Stderr, "bench conns: idle connection %d (%s) refused: CONNACK code %d\n", i, k, code)
				}
				return
			}
			if err != nil {
				firstErr.CompareAndSwap(nil, fmt.Errorf("bench conns: idle connection %d (%s): %w", i, k, err))
				return
			}
			lat[i] = float32(time.Since(t0).Seconds() * 1000)
			ic.mu.Lock()
			ic.conns = append(ic.conns, c)
			ic.mu.Unlock()
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if err, _ := firstErr.Load().(error); err != nil {
		ic.close()
		return nil, 0, nil, 0, err
	}
	slices.Sort(lat)
	return ic, took, lat[int(refused.Load()):], int(refused.Load()), ctx.Err()
}

const idleClientsCmd = "idle-clients"

// idleChild is a child process holding the idle connections.
type idleChild struct {
	cmd      *exec.Cmd
	stdin    io.Closer
	held     int
	refused  int // by the broker
	took     time.Duration
	p50, p99 float64
}

// startIdleChild runs `nxcloud bench conns idle-clients` for devices
// d-<first>… and waits until it holds them all.
func startIdleChild(ctx context.Context, stderr io.Writer, addr, slug, secret string, first, count, sources int) (*idleChild, error) {
	cmd, in, out, err := startSelf(ctx, stderr, "bench", "conns", idleClientsCmd, addr, slug, secret,
		strconv.Itoa(first), strconv.Itoa(count), strconv.Itoa(sources))
	if err != nil {
		return nil, err
	}
	ch := &idleChild{cmd: cmd, stdin: in}
	line, err := bufio.NewReader(out).ReadString('\n')
	var secs float64
	if err == nil {
		_, err = fmt.Sscanf(line, "held %d %g %g %g refused %d", &ch.held, &secs, &ch.p50, &ch.p99, &ch.refused)
	}
	if err != nil {
		ch.close()
		return nil, fmt.Errorf("bench conns: idle client process: %q: %w", line, err)
	}
	ch.took = time.Duration(secs * float64(time.Second))
	return ch, nil
}

// startSelf starts this executable with args as a child: stderr shared, its
// stdin (the child stops when it ends) and stdout piped.
func startSelf(ctx context.Context, stderr io.Writer, args ...string) (*exec.Cmd, io.WriteCloser, io.ReadCloser, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, nil, err
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Stderr = stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, nil, err
	}
	return cmd, in, out, nil
}

func (ch *idleChild) close() {
	if ch.stdin != nil {
		_ = ch.stdin.Close() // the child exits when its stdin ends
		_ = ch.cmd.Wait()
		ch.stdin = nil
	}
}

// runIdleChild is the child: it opens the connections, reports "held n
// seconds p50 p99", keeps them alive and exits when stdin ends.
func runIdleChild(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) != 6 {
		return fmt.Errorf("bench conns %s: want addr slug secret first count sources", idleClientsCmd)
	}
	first, err1 := strconv.Atoi(args[3])
	count, err2 := strconv.Atoi(args[4])
	sources, err3 := strconv.Atoi(args[5])
	if err := errors.Join(err1, err2, err3); err != nil {
		return err
	}
	raiseFileLimit(count + 1024)
	keys := make([]string, count)
	for i := range keys {
		keys[i] = fmt.Sprintf("d-%06d", first+i)
	}
	ic, took, lat, refused, err := openIdle(ctx, args[0], args[1], keys, args[2], sources)
	if err != nil {
		fmt.Fprintf(stdout, "error %v\n", err)
		return err
	}
	defer ic.close()
	fmt.Fprintf(stdout, "held %d %g %g %g refused %d\n", ic.len(), took.Seconds(), pct(lat, 50), pct(lat, 99), refused)
	stop := ic.keepAlive(ctx, 60*time.Second)
	defer stop()
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

type floodStats struct{ acked, failed, sent0 atomic.Int64 }

// startFlood connects the flooders over raw MQTT 3.1.1 (pre-encoded
// packets, so that the load generator costs little next to the broker): the
// first half publish 5-metric QoS 1 messages as fast as the broker
// acknowledges them (256 in flight), the other half QoS 0 at rate messages
// per second — both far over a device's publish rate.
func startFlood(ctx context.Context, addr, slug string, keys []string, secret string, metrics []benchMetric, rate float64) (*sync.WaitGroup, *floodStats, error) {
	st := &floodStats{}
	var wg sync.WaitGroup
	for i, k := range keys {
		c, code, err := rawConnect(addr, net.IPv4(127, 0, 0, byte(151+i%40)), k+"@"+slug, secret, 120)
		if err == nil && code != 0 {
			c.Close()
			err = fmt.Errorf("CONNACK code %d", code)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("bench conns: flooder %s: %w", k, err)
		}
		payload := appendReading(nil, time.Now(), metrics, func(benchMetric) float64 { return 0.5 })
		topic := "v1/" + slug + "/" + k + "/telemetry"
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			if i%2 == 0 {
				floodQoS1(ctx, c, topic, payload, st)
				return
			}
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4, TopicName: topic, Payload: payload}
			var buf bytes.Buffer
			_ = pk.PublishEncode(&buf)
			// 10 packets a write, at rate packets a second.
			batch := bytes.Repeat(buf.Bytes(), 10)
			t := time.NewTicker(time.Duration(float64(10*time.Second) / rate))
			defer t.Stop()
			go func() { _, _ = io.Copy(io.Discard, c) }() // nothing comes back for QoS 0 but a close
			for ctx.Err() == nil {
				_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write(batch); err != nil {
					return
				}
				st.sent0.Add(10)
				select {
				case <-ctx.Done():
				case <-t.C:
				}
			}
		}()
	}
	return &wg, st, nil
}

// floodQoS1 publishes on c with up to 256 unacknowledged QoS 1 messages.
func floodQoS1(ctx context.Context, c net.Conn, topic string, payload []byte, st *floodStats) {
	window := make(chan struct{}, 256)
	go func() { // PUBACKs: 4 bytes each
		var ack [4]byte
		for {
			if _, err := io.ReadFull(c, ack[:]); err != nil {
				return
			}
			st.acked.Add(1)
			select {
			case <-window:
			default:
			}
		}
	}()
	var buf bytes.Buffer
	for id := uint16(1); ctx.Err() == nil; id = id%60000 + 1 {
		select {
		case window <- struct{}{}:
		case <-ctx.Done():
			return
		}
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 4, PacketID: id, TopicName: topic, Payload: payload}
		buf.Reset()
		_ = pk.PublishEncode(&buf)
		_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(buf.Bytes()); err != nil {
			st.failed.Add(1)
			return
		}
	}
}

// startSlowReaders connects raw clients (16 KiB receive buffers) that
// subscribe to their commands and then never read, and has the platform send
// each a 64 KiB QoS 1 command every 50 ms until ctx ends.
func startSlowReaders(ctx context.Context, p *platform, addr, slug string, keys []string, secret string) ([]net.Conn, *atomic.Int64, error) {
	var conns []net.Conn
	for i, k := range keys {
		c, code, err := rawConnect(addr, net.IPv4(127, 0, 0, byte(201+i%40)), k+"@"+slug, secret, 120)
		if err == nil && code != 0 {
			c.Close()
			err = fmt.Errorf("CONNACK code %d", code)
		}
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, nil, fmt.Errorf("bench conns: slow reader %s: %w", k, err)
		}
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(16 << 10)
		}
		sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, ProtocolVersion: 4,
			Filters: packets.Subscriptions{{Filter: "v1/" + slug + "/" + k + "/cmd/#", Qos: 1}}}
		var buf bytes.Buffer
		_ = sub.SubscribeEncode(&buf)
		_, _ = c.Write(buf.Bytes())
		conns = append(conns, c)
	}
	var sent atomic.Int64
	payload := bytes.Repeat([]byte("s"), 64<<10)
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			for _, k := range keys {
				if p.broker.Publish("v1/"+slug+"/"+k+"/cmd/fill", payload, false, 1) == nil {
					sent.Add(1)
				}
			}
		}
	}()
	return conns, &sent, nil
}

type stormStats struct{ attempts, accepted atomic.Int64 }

// storm1 connects and disconnects from 127.0.0.254 at each tick of pace.
func storm1(ctx context.Context, addr, username, secret string, pace <-chan time.Time, st *stormStats) {
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
			return
		case <-pace:
		}
		st.attempts.Add(1)
		c, code, err := rawConnect(addr, net.IPv4(127, 0, 0, 254), username, secret, 30)
		if err != nil {
			sleepCtx(ctx, time.Millisecond) // out of ports and the like
			continue
		}
		if code == 0 {
			st.accepted.Add(1)
			_, _ = c.Write([]byte{0xE0, 0}) // DISCONNECT
		}
		_ = c.Close()
	}
}

// raiseFileLimit lifts RLIMIT_NOFILE to at least n (root may raise the hard
// limit too); it reports nothing and leaves the limit as it is on failure.
func raiseFileLimit(n int) {
	var r syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r) != nil || r.Cur >= uint64(n) {
		return
	}
	want := syscall.Rlimit{Cur: uint64(n), Max: max(r.Max, uint64(n))}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) != nil {
		r.Cur = r.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	}
}

// rssBytes is the process's resident set (VmRSS).
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func heapBytes() int64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}

func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

var loadavg0 = loadavg()

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// machineCPU returns the machine's busy and total CPU time so far, in
// clock ticks, from /proc/stat (zeros where it cannot be read).
func machineCPU() (busy, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	for i, x := range f[1:] {
		v, err := strconv.ParseFloat(x, 64)
		if err != nil {
			return 0, 0
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// processCPU is the process's CPU time in seconds (user+system): what a
// disturbance costs the platform, less blurred by other processes than
// latency is.
func processCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// rawConnect opens an MQTT 3.1.1 connection from local address from and
// returns it once the broker has answered CONNACK (code 0 = accepted).
func rawConnect(addr string, from net.IP, username, secret string, keepalive uint16) (net.Conn, byte, error) {
	d := net.Dialer{Timeout: 30 * time.Second}
	if from != nil {
		d.LocalAddr = &net.TCPAddr{IP: from}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, 0, err
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: keepalive, ClientIdentifier: username,
			UsernameFlag: true, Username: []byte(username), PasswordFlag: true, Password: []byte(secret)}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		c.Close()
		return nil, 0, err
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(buf.Bytes()); err != nil {
		c.Close()
		return nil, 0, err
	}
	var ack [4]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		c.Close()
		return nil, 0, err
	}
	_ = c.SetDeadline(time.Time{})
	if ack[0] != 0x20 {
		c.Close()
		return nil, 0, fmt.Errorf("bench conns: %s got packet %#x instead of CONNACK", username, ack[0])
	}
	return c, ack[3], nil
}
