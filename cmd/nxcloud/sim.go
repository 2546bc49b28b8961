package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/nxcloud/nxcloud/tenants"
)

// simDevice is one simulated device: its credentials and how its metrics move.
type simDevice struct {
	Tenant  string
	Key     string
	Secret  string
	Metrics []tenants.MetricTemplate
}

// simulator publishes realistic telemetry for devices over MQTT, one paho
// client per device, as the devices of a factory would.
type simulator struct {
	broker   string
	interval time.Duration
	qos      byte
	log      *slog.Logger

	published atomic.Int64
	failed    atomic.Int64
}

// demoDevices lists the demo enterprise's devices of a sector template.
func demoDevices(tpl *tenants.Template, secret string) []simDevice {
	models := map[string]tenants.ModelTemplate{}
	for _, m := range tpl.DeviceModels {
		models[m.Key] = m
	}
	var out []simDevice
	for _, l := range tpl.Demo.Lines {
		for _, d := range l.Devices {
			if d.Manual {
				continue
			}
			out = append(out, simDevice{Tenant: tpl.Demo.Slug, Key: d.Key, Secret: secret, Metrics: models[d.Model].Metrics})
		}
	}
	return out
}

// run connects every device and publishes until ctx is done.
func (s *simulator) run(ctx context.Context, devices []simDevice) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(devices))
	for i, d := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.device(ctx, d, int64(i)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func (s *simulator) device(ctx context.Context, d simDevice, seed int64) error {
	user := tenants.MQTTUsername(d.Key, d.Tenant)
	opts := mqtt.NewClientOptions().AddBroker(s.broker).SetClientID(user).SetUsername(user).SetPassword(d.Secret).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(2 * time.Second).
		SetMaxReconnectInterval(10 * time.Second).SetKeepAlive(30 * time.Second).SetCleanSession(true)
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	select {
	case <-ctx.Done():
		return nil
	case <-tok.Done():
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("simulated device %s: connect: %w", d.Key, err)
	}
	defer c.Disconnect(250)
	prefix := "v1/" + d.Tenant + "/" + d.Key + "/"
	c.Publish(prefix+"state", 1, false, `{"state":"run"}`)

	rng := rand.New(rand.NewPCG(uint64(seed), 0x6e78))
	phase := make([]float64, len(d.Metrics))
	counters := make([]float64, len(d.Metrics))
	for i, m := range d.Metrics {
		phase[i] = rng.Float64() * 2 * math.Pi
		if m.Sim != nil && m.Sim.Counter && m.Min != nil {
			counters[i] = *m.Min + rng.Float64()*1000
		}
	}
	// Spread devices over the interval so the broker sees a steady stream.
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(time.Duration(rng.Int64N(int64(s.interval)))):
	}
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	start := time.Now()
	var buf strings.Builder
	for {
		now := time.Now()
		buf.Reset()
		buf.WriteString(`{"ts":`)
		buf.WriteString(strconv.FormatInt(now.UnixMilli(), 10))
		buf.WriteString(`,"metrics":{`)
		for i, m := range d.Metrics {
			if i > 0 {
				buf.WriteByte(',')
			}
			buf.WriteString(strconv.Quote(m.Key))
			buf.WriteByte(':')
			buf.WriteString(strconv.FormatFloat(simValue(m, now.Sub(start).Seconds(), phase[i], &counters[i], s.interval, rng), 'f', -1, 64))
		}
		buf.WriteString(`}}`)
		pt := c.Publish(prefix+"telemetry", s.qos, false, buf.String())
		go func() {
			pt.Wait()
			if pt.Error() != nil {
				s.failed.Add(1)
			} else {
				s.published.Add(1)
			}
		}()
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// simValue is a metric's value at t seconds: base, a slow sinusoidal swing,
// Gaussian noise, kept inside the valid range; counters grow by base per second.
func simValue(m tenants.MetricTemplate, t, phase float64, counter *float64, step time.Duration, rng *rand.Rand) float64 {
	h := m.Sim
	if h == nil {
		lo, hi := 0.0, 100.0
		if m.Min != nil {
			lo = *m.Min
		}
		if m.Max != nil {
			hi = *m.Max
		}
		return round((lo+hi)/2, 3)
	}
	if h.Counter {
		*counter += h.Base * step.Seconds() * (0.9 + 0.2*rng.Float64())
		return round(*counter, 3)
	}
	v := h.Base + h.Noise*rng.NormFloat64()
	if h.Amplitude != 0 && h.PeriodS > 0 {
		v += h.Amplitude * math.Sin(2*math.Pi*t/h.PeriodS+phase)
	}
	if m.Min != nil && v < *m.Min {
		v = *m.Min
	}
	if m.Max != nil && v > *m.Max {
		v = *m.Max
	}
	return round(v, 4)
}

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

func cmdSimulate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokerURL := fs.String("broker", envOr(getenv, "NXCLOUD_SIM_BROKER", "tcp://127.0.0.1:1883"), "MQTT broker URL (NXCLOUD_SIM_BROKER)")
	sector := fs.String("sector", "magnetic-materials", "sector whose demo enterprise's devices to simulate")
	secret := fs.String("secret", tenants.DemoDeviceSecret, "device secret")
	interval := fs.Duration("interval", time.Second, "time between two messages of one device")
	qos := fs.Int("qos", 1, "MQTT QoS of telemetry (0 or 1)")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	templates, err := tenants.Templates()
	if err != nil {
		return err
	}
	tpl, ok := templates[*sector]
	if !ok || tpl.Demo == nil {
		return fmt.Errorf("sector %q has no demo devices", *sector)
	}
	log, _ := newLogger(stderr, "info", "text")
	sim := &simulator{broker: *brokerURL, interval: *interval, qos: byte(*qos), log: log}
	devs := demoDevices(tpl, *secret)
	fmt.Fprintf(stdout, "simulating %d devices of %s on %s every %s (Ctrl-C stops)\n", len(devs), tpl.Demo.Slug, *brokerURL, *interval)
	go sim.report(ctx, stdout, 10*time.Second)
	return sim.run(ctx, devs)
}

func (s *simulator) report(ctx context.Context, w io.Writer, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fmt.Fprintf(w, "simulator: %d messages acknowledged, %d failed\n", s.published.Load(), s.failed.Load())
		}
	}
}

func envOr(getenv func(string) string, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}
