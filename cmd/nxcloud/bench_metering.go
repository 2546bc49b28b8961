package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nxcloud/nxcloud/tenants"
)

// cmdBenchMetering measures what metering costs ingest, in one run: an
// in-process platform is saturated by QoS 1 floods from many devices, and
// the metering hook is switched off and on in alternating rounds, so that
// the load of a shared machine drifts equally over both. It reports the
// committed points per second of each round and the ratio on/off.
func cmdBenchMetering(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var devices, inflight, readings, rounds *int
	var round *time.Duration
	cfg, err := parseCommand("bench-metering", args, getenv, stderr, func(fs *flag.FlagSet) {
		devices = fs.Int("devices", 64, "devices flooding, one MQTT connection each")
		inflight = fs.Int("inflight", 4, "QoS 1 messages in flight per device")
		readings = fs.Int("readings", 100, "readings per message (5 metrics each)")
		rounds = fs.Int("rounds", 10, "rounds, alternately without and with metering")
		round = fs.Duration("round", 8*time.Second, "length of a round")
	})
	if err != nil {
		return err
	}
	cfg.HTTPAddr, cfg.MQTTAddr, cfg.MQTTWSAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	if cfg.LogLevel == "info" {
		cfg.LogLevel = "warn"
	}
	log, err := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	off := &atomic.Bool{}
	p, err := startPlatform(ctx, cfg, log, platformOptions{meteringOff: off})
	if err != nil {
		return err
	}
	defer p.shutdown()
	say := func(f string, a ...any) { fmt.Fprintf(stderr, "bench-metering: "+f+"\n", a...) }

	slug := "bench-meter-" + strconv.FormatInt(time.Now().Unix(), 36)
	t, _, err := p.tenants.CreateEnterprise(ctx, tenants.EnterpriseInput{Slug: slug, Name: "nxcloud metering bench", Sector: "magnetic-materials"})
	if err != nil {
		return err
	}
	defer func() {
		_, _ = p.sys.Exec(context.Background(), `DELETE FROM telemetry WHERE tenant_id = $1`, t.ID)
	}()
	const secret = "bench-device-secret"
	say("registering %d devices in tenant %s", *devices, slug)
	keys := make([]string, *devices)
	for i := range keys {
		keys[i] = fmt.Sprintf("mill-%04d", i)
		if _, _, err := p.tenants.RegisterDevice(ctx, t.ID, tenants.DeviceInput{Key: keys[i], Model: "jet-mill", Secret: secret}); err != nil {
			return err
		}
	}
	clients, err := connectAll(ctx, "tcp://"+p.broker.TCPAddr(), slug, keys, secret)
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var seq atomic.Int64
	base := time.Now().Add(-2 * time.Hour).UnixMilli()
	for i, c := range clients {
		topic := "v1/" + slug + "/" + keys[i] + "/telemetry"
		for j := 0; j < *inflight; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 0, *readings*120)
				for runCtx.Err() == nil {
					ts := base + seq.Add(int64(*readings))
					buf = append(buf[:0], '[')
					for r := 0; r < *readings; r++ {
						if r > 0 {
							buf = append(buf, ',')
						}
						buf = append(buf, `{"ts":`...)
						buf = strconv.AppendInt(buf, ts+int64(r), 10)
						buf = append(buf, `,"metrics":{"d50_um":3.8,"power_kw":150,"grind_pressure_mpa":0.65,"classifier_speed_rpm":4000,"o2_ppm":20}}`...)
					}
					buf = append(buf, ']')
					tok := c.Publish(topic, 1, false, buf)
					tok.Wait()
				}
			}()
		}
	}
	say("warming up for %s", *round)
	sleepCtx(ctx, *round)
	var onRates, offRates []float64
	fmt.Fprintf(stdout, "nxcloud bench-metering — %s, %d devices × %d in flight × %d points a message, QoS 1, %d rounds of %s\n",
		time.Now().UTC().Format(time.RFC3339), *devices, *inflight, *readings*5, *rounds, *round)
	for r := 0; r < *rounds && ctx.Err() == nil; r++ {
		metering := r%2 == 1
		off.Store(!metering)
		sleepCtx(ctx, time.Second) // batches in flight finish in the previous mode
		c0, t0 := p.pipe.Stats().PointsCommitted.Load(), time.Now()
		sleepCtx(ctx, *round-time.Second)
		rate := float64(p.pipe.Stats().PointsCommitted.Load()-c0) / time.Since(t0).Seconds()
		mode := "off"
		if metering {
			mode, onRates = "on", append(onRates, rate)
		} else {
			offRates = append(offRates, rate)
		}
		fmt.Fprintf(stdout, "  round %2d  metering %-3s  %10.0f points/s committed\n", r+1, mode, rate)
	}
	stop()
	wg.Wait()
	for _, c := range clients {
		c.Disconnect(100)
	}
	off.Store(false)
	mean := func(v []float64) float64 {
		var s float64
		for _, x := range v {
			s += x
		}
		return s / float64(max(len(v), 1))
	}
	median := func(v []float64) float64 {
		v = slices.Clone(v)
		slices.Sort(v)
		if len(v) == 0 {
			return 0
		}
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	fmt.Fprintf(stdout, "  metering off: mean %.0f, median %.0f points/s\n", mean(offRates), median(offRates))
	fmt.Fprintf(stdout, "  metering on:  mean %.0f, median %.0f points/s\n", mean(onRates), median(onRates))
	fmt.Fprintf(stdout, "  on/off: %.3f (mean), %.3f (median) → metering costs %.1f %% of ingest throughput (mean)\n",
		mean(onRates)/mean(offRates), median(onRates)/median(offRates), 100*(1-mean(onRates)/mean(offRates)))
	var stored, metered int64
	if err := p.sys.QueryRow(ctx, `SELECT count(*) FROM telemetry WHERE tenant_id = $1`, t.ID).Scan(&stored); err == nil {
		metered, _, _ = p.meter.TelemetryTotals(ctx, t.ID)
		fmt.Fprintf(stdout, "  rows stored %d, metered %d (the rounds without metering are not counted, by design of the bench)\n", stored, metered)
	}
	return nil
}
