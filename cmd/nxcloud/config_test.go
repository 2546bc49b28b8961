package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestConfigFromEnvironmentAndFlags(t *testing.T) {
	var c config
	fs := newFlagSet()
	err := bindConfig(fs, &c, env(map[string]string{
		"NXCLOUD_HTTP_ADDR": ":9090", "NXCLOUD_INGEST_WRITERS": "5", "NXCLOUD_INGEST_FLUSH": "20ms", "NXCLOUD_NO_MIGRATE": "true",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse([]string{"--ingest-writers", "7"}); err != nil {
		t.Fatal(err)
	}
	if c.HTTPAddr != ":9090" || c.IngestWriters != 7 || c.IngestFlush != 20*time.Millisecond || !c.NoMigrate {
		t.Fatalf("config %+v", c)
	}
	if c.MQTTAddr != ":1883" || c.Timescale != "auto" {
		t.Fatalf("defaults lost: %+v", c)
	}
	app, err := c.appURL()
	if err != nil || !strings.HasPrefix(app, "postgres://nxcloud_app@127.0.0.1:55432/nxcloud") {
		t.Fatalf("app URL %q, %v", app, err)
	}
}

func TestConfigRejectsBadEnvironment(t *testing.T) {
	var c config
	err := bindConfig(newFlagSet(), &c, env(map[string]string{"NXCLOUD_INGEST_WRITERS": "three", "NXCLOUD_INGEST_FLUSH": "soon"}))
	if err == nil || !strings.Contains(err.Error(), "NXCLOUD_INGEST_WRITERS") || !strings.Contains(err.Error(), "NXCLOUD_INGEST_FLUSH") {
		t.Fatalf("err = %v", err)
	}
}

func TestRunUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run(context.Background(), nil, env(nil), &out, &errb); err != errUsage || !strings.Contains(errb.String(), "Commands:") {
		t.Fatalf("no args: %v %q", err, errb.String())
	}
	if err := run(context.Background(), []string{"frobnicate"}, env(nil), &out, &errb); err != errUsage {
		t.Fatalf("unknown command: %v", err)
	}
	out.Reset()
	if err := run(context.Background(), []string{"version"}, env(nil), &out, &errb); err != nil || !strings.HasPrefix(out.String(), "nxcloud ") {
		t.Fatalf("version: %v %q", err, out.String())
	}
}
