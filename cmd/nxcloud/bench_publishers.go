package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// publishersCmd is the hidden subcommand (`nxcloud bench publishers …`) that
// runs the sustained phase's simulated devices in a process of their own.
//
// In the platform's process the 1 000 paho clients share the Go scheduler
// with the broker and the ingest writers: measured, once the machine's CPU
// was used up, every database round trip of a writer (BEGIN, COPY, COMMIT)
// waited 50–90 ms for a turn behind the generator's runnable goroutines, so
// the bench measured its own load generator as much as the platform.
const publishersCmd = "publishers"

// publishers is the sustained phase's load: acknowledged and failed
// publishes so far, and stop (which stops publishing and waits for the
// outstanding acknowledgements; later calls do nothing).
type publishers interface {
	counts() (acked, failed int64)
	stop()
}

// inProcess publishes from this process (used for an external target, whose
// latency probe records publish times here).
type inProcess struct {
	acked, failed atomic.Int64
	cancel        context.CancelFunc
	loops, colls  sync.WaitGroup
	pendings      []chan mqtt.Token
	clients       []mqtt.Client
	stopOnce      sync.Once
}

func (p *inProcess) counts() (int64, int64) { return p.acked.Load(), p.failed.Load() }

func (p *inProcess) stop() {
	p.stopOnce.Do(func() {
		p.cancel()
		p.loops.Wait()
		for _, c := range p.pendings {
			close(c)
		}
		p.colls.Wait()
		for _, c := range p.clients {
			c.Disconnect(100)
		}
	})
}

// startInProcess connects the devices and starts publishing: each device
// from its own goroutine (paho's Publish blocks while its client writes);
// acknowledgements are collected in publish order by one goroutine per 50
// devices rather than one goroutine per message.
func startInProcess(ctx context.Context, brokerURL, slug, secret string, devices []string, keys []benchMetric, qos byte,
	every time.Duration, recorder func(string) func(time.Time)) (*inProcess, error) {
	clients, err := connectAll(ctx, brokerURL, slug, devices, secret)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	p := &inProcess{cancel: cancel, clients: clients}
	for g := 0; g < len(clients); g += 50 {
		pending := make(chan mqtt.Token, 64*1024)
		p.pendings = append(p.pendings, pending)
		p.colls.Add(1)
		go func() {
			defer p.colls.Done()
			for tok := range pending {
				tok.Wait()
				if tok.Error() == nil {
					p.acked.Add(1)
				} else {
					p.failed.Add(1)
				}
			}
		}()
		for i := g; i < min(g+50, len(clients)); i++ {
			p.loops.Add(1)
			go func() {
				defer p.loops.Done()
				var rec func(time.Time)
				if recorder != nil {
					rec = recorder(devices[i])
				}
				publishLoop(runCtx, clients[i], "v1/"+slug+"/"+devices[i]+"/telemetry", keys, qos, every, int64(i), pending, rec)
			}()
		}
	}
	return p, nil
}

// childPublishers runs startInProcess in `nxcloud bench publishers`, which
// reports its counts on stdout every 200 ms.
type childPublishers struct {
	cmd           *exec.Cmd
	stdin         io.Closer
	acked, failed atomic.Int64
	done          chan struct{}
}

func (p *childPublishers) counts() (int64, int64) { return p.acked.Load(), p.failed.Load() }

func (p *childPublishers) stop() {
	if p.stdin == nil {
		return
	}
	_ = p.stdin.Close() // the child stops publishing when its stdin ends
	<-p.done
	_ = p.cmd.Wait()
	p.stdin = nil
}

func startPublisherChild(ctx context.Context, stderr io.Writer, brokerURL, slug, secret string, devices int, keys []benchMetric, qos byte, every time.Duration) (*childPublishers, error) {
	specs := make([]string, len(keys))
	for i, k := range keys {
		specs[i] = fmt.Sprintf("%s:%g:%g", k.key, k.lo, k.hi)
	}
	cmd, in, out, err := startSelf(ctx, stderr, "bench", publishersCmd, brokerURL, slug, secret, strconv.Itoa(devices),
		strings.Join(specs, ","), strconv.Itoa(int(qos)), every.String())
	if err != nil {
		return nil, err
	}
	p := &childPublishers{cmd: cmd, stdin: in, done: make(chan struct{})}
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "connected" {
		_ = in.Close()
		_ = cmd.Wait()
		return nil, fmt.Errorf("bench: publisher process: %q (its errors are above)", lines.Text())
	}
	go func() {
		defer close(p.done)
		for lines.Scan() {
			var a, f int64
			if _, err := fmt.Sscanf(lines.Text(), "acked %d failed %d", &a, &f); err == nil {
				p.acked.Store(a)
				p.failed.Store(f)
			}
		}
	}()
	return p, nil
}

// runPublisherChild is the child: it connects dev-00000… , prints
// "connected", publishes until stdin ends, waits for the outstanding
// acknowledgements and prints the final counts.
func runPublisherChild(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) != 7 {
		return fmt.Errorf("bench %s: want broker slug secret devices metrics qos interval", publishersCmd)
	}
	n, err := strconv.Atoi(args[3])
	if err != nil {
		return err
	}
	var keys []benchMetric
	for _, spec := range strings.Split(args[4], ",") {
		var k benchMetric
		parts := strings.Split(spec, ":")
		if len(parts) != 3 {
			return fmt.Errorf("bench %s: metric %q", publishersCmd, spec)
		}
		k.key = parts[0]
		if k.lo, err = strconv.ParseFloat(parts[1], 64); err != nil {
			return err
		}
		if k.hi, err = strconv.ParseFloat(parts[2], 64); err != nil {
			return err
		}
		keys = append(keys, k)
	}
	qos, err := strconv.Atoi(args[5])
	if err != nil {
		return err
	}
	every, err := time.ParseDuration(args[6])
	if err != nil {
		return err
	}
	raiseFileLimit(n + 1024)
	devices := make([]string, n)
	for i := range devices {
		devices[i] = fmt.Sprintf("dev-%05d", i)
	}
	p, err := startInProcess(ctx, args[0], args[1], args[2], devices, keys, byte(qos), every, nil)
	if err != nil {
		fmt.Fprintf(stdout, "error %v\n", err)
		return err
	}
	fmt.Fprintln(stdout, "connected")
	ended := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(ended) }()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for running := true; running; {
		select {
		case <-tick.C:
		case <-ended:
			running = false
		case <-ctx.Done():
			running = false
		}
		a, f := p.counts()
		fmt.Fprintf(stdout, "acked %d failed %d\n", a, f)
	}
	p.stop()
	a, f := p.counts()
	fmt.Fprintf(stdout, "acked %d failed %d\n", a, f)
	return nil
}
