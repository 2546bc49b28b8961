package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/nxcloud/nxcloud/tenants"
)

// demoOperatorToken is the operator token `nxcloud demo` uses when none is set.
const demoOperatorToken = "demo-operator-token"

func cmdDemo(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var sector *string
	var interval *time.Duration
	var noSim *bool
	cfg, err := parseCommand("demo", args, getenv, stderr, func(fs *flag.FlagSet) {
		sector = fs.String("sector", "magnetic-materials", "sector of the demo enterprise")
		interval = fs.Duration("sim-interval", time.Second, "time between two messages of one simulated device")
		noSim = fs.Bool("no-simulator", false, "do not start the device simulator")
	})
	if err != nil {
		return err
	}
	if cfg.OperatorToken == "" {
		cfg.OperatorToken = demoOperatorToken
	}
	log, err := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	p, err := startPlatform(ctx, cfg, log, platformOptions{})
	if err != nil {
		return err
	}
	res, err := p.tenants.SeedDemo(ctx, *sector)
	if err != nil {
		_ = p.shutdown()
		return fmt.Errorf("seed demo: %w", err)
	}
	if err := p.meter.EnsureDemoPlan(ctx, res.Tenant.ID); err != nil { // docs/metering.md
		_ = p.shutdown()
		return fmt.Errorf("demo plan: %w", err)
	}
	state := "reused"
	if res.Created {
		state = "created"
	}
	tpl, _ := p.tenants.Template(*sector)
	p.printURLs(stdout)
	fmt.Fprintf(stdout, "\nDemo enterprise %q (%s, %s) with %d devices\n", res.Tenant.Name, res.Tenant.Slug, state, len(res.Devices))
	fmt.Fprintf(stdout, "  API key          %s\n", tenants.DemoAPIKey)
	fmt.Fprintf(stdout, "  owner login      email %s  password %s  (POST /api/v1/auth/login)\n", tenants.DemoOwnerEmail, tenants.DemoOwnerPassword)
	fmt.Fprintf(stdout, "  operator token   %s\n", cfg.OperatorToken)
	if len(res.Devices) > 0 {
		d := res.Devices[0]
		manual := d.Key
		for _, l := range tpl.Demo.Lines {
			for _, dv := range l.Devices {
				if dv.Manual {
					manual = dv.Key
				}
			}
		}
		fmt.Fprintf(stdout, "  device login     username %s  password %s  (every demo device: <device>@%s)\n",
			tenants.MQTTUsername(d.Key, res.Tenant.Slug), tenants.DemoDeviceSecret, res.Tenant.Slug)
		_, mqttPort, _ := net.SplitHostPort(p.broker.TCPAddr())
		fmt.Fprintf(stdout, "\nTry (%s is not simulated, so what you send is all it has):\n", manual)
		fmt.Fprintf(stdout, "  mosquitto_pub -h %s -p %s -q 1 -u %s -P %s -t v1/%s/%s/telemetry -m '{\"metrics\":{\"zone1_temp\":1071.5}}'\n",
			cfg.PublicHost, mqttPort, tenants.MQTTUsername(manual, res.Tenant.Slug), tenants.DemoDeviceSecret, res.Tenant.Slug, manual)
		fmt.Fprintf(stdout, "  curl -s -H 'Authorization: Bearer %s' '%s/api/v1/devices/%s/series?metric=zone1_temp'\n",
			tenants.DemoAPIKey, p.httpURL(), manual)
		fmt.Fprintf(stdout, "  curl -s -H 'Authorization: Bearer %s' '%s/api/v1/devices/%s/buckets?width=1m'\n",
			tenants.DemoAPIKey, p.httpURL(), d.Key)
		fmt.Fprintf(stdout, "  curl -s -d '{\"email\":\"%s\",\"password\":\"%s\"}' -H 'Content-Type: application/json' '%s/api/v1/auth/login'\n",
			tenants.DemoOwnerEmail, tenants.DemoOwnerPassword, p.httpURL())
	}
	if !*noSim && tpl != nil && p.broker.TCPAddr() != "" {
		_, port, _ := net.SplitHostPort(p.broker.TCPAddr())
		sim := &simulator{broker: "tcp://127.0.0.1:" + port, interval: *interval, qos: 1, log: log}
		devs := demoDevices(tpl, tenants.DemoDeviceSecret)
		fmt.Fprintf(stdout, "\nSimulator: %d devices publishing every %s. Ctrl-C stops everything.\n", len(devs), *interval)
		go func() {
			if err := sim.run(ctx, devs); err != nil {
				log.Error("simulator stopped", "err", err)
			}
		}()
		go sim.report(ctx, stdout, time.Minute)
	}
	<-ctx.Done()
	return p.shutdown()
}
