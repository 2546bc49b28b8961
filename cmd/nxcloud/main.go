// Command nxcloud is the cloud side of a sub-industry industrial internet
// platform: an MQTT broker ingesting device telemetry into PostgreSQL (with
// TimescaleDB when present) and an HTTP API for the N apps, in one binary.
//
// Usage:
//
//	nxcloud serve      run broker, ingest, HTTP API and background jobs
//	nxcloud migrate    apply database migrations (--status lists them)
//	nxcloud demo       migrate, seed the demo factory, serve and simulate its devices
//	nxcloud simulate   publish simulated telemetry for a tenant's devices over MQTT
//	nxcloud bench      measure end-to-end ingest against the raw COPY limit
//	nxcloud tenant     create an enterprise from a sector template
//
// Every flag can also be set by an NXCLOUD_* environment variable (see README).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, errUsage) {
			fmt.Fprintln(os.Stderr, "nxcloud:", err)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

const usage = `nxcloud — sub-industry industrial internet platform (cloud side)

Usage: nxcloud <command> [flags]

Commands:
  serve      run broker, ingest, HTTP API and background jobs
  migrate    apply database migrations (--status lists them)
  demo       migrate, seed the demo factory, serve it and simulate its devices
  simulate   publish simulated telemetry for devices over MQTT
  bench      measure end-to-end ingest throughput and latency against raw COPY
  chaos      ingest fault test: SIGKILL nxcloud twice, stop PostgreSQL 60 s, restart Redis under QoS 1
             traffic; prove every acknowledged message stored exactly once
  chaos-metering  kill nxcloud twice and restart Redis under traffic; prove metering exact
  bench-metering  ingest throughput with metering off and on, alternating rounds of one run
  tenant     onboard an enterprise: tenant create --sector S --slug X --name N
  version    print the version

Run 'nxcloud <command> -h' for the command's flags. Every flag can be set by
an NXCLOUD_* environment variable: --database-url is NXCLOUD_DATABASE_URL.
`

// run is the whole program; main only supplies the process's environment.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return cmdServe(ctx, rest, getenv, stdout, stderr)
	case "migrate":
		return cmdMigrate(ctx, rest, getenv, stdout, stderr)
	case "demo":
		return cmdDemo(ctx, rest, getenv, stdout, stderr)
	case "simulate":
		return cmdSimulate(ctx, rest, getenv, stdout, stderr)
	case "bench":
		return cmdBench(ctx, rest, getenv, stdout, stderr)
	case "chaos":
		return cmdChaos(ctx, rest, getenv, stdout, stderr)
	case "chaos-metering":
		return cmdChaosMetering(ctx, rest, getenv, stdout, stderr)
	case "bench-metering":
		return cmdBenchMetering(ctx, rest, getenv, stdout, stderr)
	case "tenant":
		return cmdTenant(ctx, rest, getenv, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "nxcloud", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "nxcloud: unknown command %q\n\n%s", cmd, usage)
	return errUsage
}

var version = "dev"
