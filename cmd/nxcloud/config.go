package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nxcloud/nxcloud/broker"
)

// config is every setting of the serve path. Each field has a flag and an
// NXCLOUD_* environment variable; flags win over the environment.
type config struct {
	DatabaseURL    string
	AppDatabaseURL string
	RedisURL       string
	HTTPAddr       string
	MQTTAddr       string
	MQTTWSAddr     string
	OperatorToken  string
	Timescale      string
	TrustedProxies string
	LogLevel       string
	LogFormat      string

	IngestWriters    int
	IngestBatch      int
	IngestFlush      time.Duration
	IngestDurability string
	IngestSpoolDir   string
	IngestSpoolBytes int
	IngestSpoolSync  time.Duration
	MQTTSessionStore string
	MaxPacket        int
	AuthCacheTTL     time.Duration
	MaintainEvery    time.Duration
	ShutdownTimeout  time.Duration
	NoMigrate        bool
	Metering         bool
	PublicHost       string
	RetentionDays    int
	MQTTConnectLimit time.Duration

	// Limits against hostile clients (broker.Limits); a negative rate disables one.
	MQTTDeviceRate, MQTTDeviceBurst       int
	MQTTDeviceBytes, MQTTDeviceBytesBurst int
	MQTTConnectRate, MQTTConnectBurst     int
	MQTTThrottleMax, MQTTWriteTimeout     time.Duration
}

// env maps flag names to environment variables: database-url → NXCLOUD_DATABASE_URL.
func envName(flagName string) string {
	return "NXCLOUD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// bindConfig defines the flags of c on fs, with defaults taken from the
// environment when set. It reports environment values that do not parse.
func bindConfig(fs *flag.FlagSet, c *config, getenv func(string) string) error {
	var bad []string
	str := func(p *string, name, def, help string) {
		if v := getenv(envName(name)); v != "" {
			def = v
		}
		fs.StringVar(p, name, def, help+" ("+envName(name)+")")
	}
	integer := func(p *int, name string, def int, help string) {
		if s := getenv(envName(name)); s != "" {
			v, err := strconv.Atoi(s)
			if err != nil {
				bad = append(bad, fmt.Sprintf("%s=%q is not a whole number", envName(name), s))
			}
			def = v
		}
		fs.IntVar(p, name, def, help+" ("+envName(name)+")")
	}
	dur := func(p *time.Duration, name string, def time.Duration, help string) {
		if s := getenv(envName(name)); s != "" {
			v, err := time.ParseDuration(s)
			if err != nil {
				bad = append(bad, fmt.Sprintf("%s=%q is not a duration such as 500ms or 30s", envName(name), s))
			}
			def = v
		}
		fs.DurationVar(p, name, def, help+" ("+envName(name)+")")
	}
	str(&c.DatabaseURL, "database-url", "postgres://nxcloud@127.0.0.1:55432/nxcloud?sslmode=disable",
		"PostgreSQL URL of the schema owner (migrations, ingest, background jobs); needs BYPASSRLS or superuser")
	str(&c.AppDatabaseURL, "app-database-url", "",
		"PostgreSQL URL for tenant requests, as a role under row-level security (default: database-url with user nxcloud_app)")
	str(&c.RedisURL, "redis-url", "redis://127.0.0.1:56379/0", "Redis URL for hot state")
	str(&c.HTTPAddr, "http-addr", ":8080", "HTTP API listen address")
	str(&c.MQTTAddr, "mqtt-addr", ":1883", "MQTT TCP listen address (empty disables)")
	str(&c.MQTTWSAddr, "mqtt-ws-addr", ":8083", "MQTT over WebSocket listen address (empty disables)")
	str(&c.OperatorToken, "operator-token", "", "bearer token of the operator API (empty disables it)")
	str(&c.Timescale, "timescaledb", "auto", "use TimescaleDB: auto, on or off (chosen once, when the database is first migrated)")
	str(&c.TrustedProxies, "trusted-proxies", "", "comma-separated CIDRs of reverse proxies whose X-Forwarded-For is trusted")
	str(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	str(&c.LogFormat, "log-format", "text", "log format: text or json")
	str(&c.PublicHost, "public-host", "localhost", "host name printed in URLs")
	integer(&c.IngestWriters, "ingest-writers", 3, "concurrent ingest writers (database connections)")
	integer(&c.IngestBatch, "ingest-batch", 10000, "points per ingest batch")
	dur(&c.IngestFlush, "ingest-flush", 50*time.Millisecond, "longest wait for an ingest batch to fill")
	str(&c.IngestDurability, "ingest-durability", "spool",
		"when a QoS 1 publish is acknowledged: spool (once fsynced in the ingest spool) or commit (once committed in PostgreSQL)")
	str(&c.MQTTSessionStore, "mqtt-session-store", ".data/mqtt-sessions.db",
		"file keeping persistent MQTT sessions (subscriptions, queued QoS 1 commands) across restarts; empty keeps them in memory")
	str(&c.IngestSpoolDir, "ingest-spool-dir", ".data/spool", "directory of the ingest spool (durability spool)")
	integer(&c.IngestSpoolBytes, "ingest-spool-bytes", 1<<30,
		"budget of the ingest spool in bytes (on disk; in memory with durability commit): beyond it QoS 1 publishes wait and QoS 0 ones are dropped")
	dur(&c.IngestSpoolSync, "ingest-spool-sync", 5*time.Millisecond,
		"shortest time between two group fsyncs of the spool: under load, every QoS 1 publish that arrives meanwhile shares the next fsync (0: fsync as soon as the last ended)")
	integer(&c.MaxPacket, "mqtt-max-packet", 2<<20, "largest MQTT packet in bytes")
	dur(&c.AuthCacheTTL, "auth-cache-ttl", 3*time.Second, "how long credential checks are cached (a disabled device is refused within it)")
	dur(&c.MaintainEvery, "maintain-every", 30*time.Second, "interval of storage maintenance (partitions, rollups) without TimescaleDB")
	dur(&c.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "how long shutdown may take to flush ingest")
	integer(&c.RetentionDays, "retention-days", 400, "days of raw telemetry kept (plain PostgreSQL; TimescaleDB uses its policy)")
	dur(&c.MQTTConnectLimit, "mqtt-connect-timeout", 10*time.Second, "close sockets that send no CONNECT within this")
	integer(&c.MQTTDeviceRate, "mqtt-device-rate", 200, "publishes per second per device (negative: no limit)")
	integer(&c.MQTTDeviceBurst, "mqtt-device-burst", 1000, "publishes a device may send at once above its rate")
	integer(&c.MQTTDeviceBytes, "mqtt-device-bytes", 2<<20, "publish bytes per second per device (negative: no limit)")
	integer(&c.MQTTDeviceBytesBurst, "mqtt-device-bytes-burst", 8<<20, "publish bytes a device may send at once above its rate")
	dur(&c.MQTTThrottleMax, "mqtt-throttle-max", 5*time.Second, "longest a QoS 1 publish over its device's rate is held before the client is disconnected")
	integer(&c.MQTTConnectRate, "mqtt-connect-rate", 50, "new MQTT connections per second per source address (negative: no limit)")
	integer(&c.MQTTConnectBurst, "mqtt-connect-burst", 1000, "new MQTT connections a source address may open at once")
	dur(&c.MQTTWriteTimeout, "mqtt-write-timeout", 30*time.Second, "close a client that does not take a write within this (slow reader)")
	mt := getenv(envName("metering"))
	fs.BoolVar(&c.Metering, "metering", mt != "false" && mt != "0", "count telemetry in the usage ledger in each ingest batch's transaction; off only to measure its cost ("+envName("metering")+")")
	nm := getenv(envName("no-migrate"))
	fs.BoolVar(&c.NoMigrate, "no-migrate", nm == "true" || nm == "1", "do not apply migrations on start ("+envName("no-migrate")+")")
	if len(bad) > 0 {
		return fmt.Errorf("environment: %s", strings.Join(bad, "; "))
	}
	return nil
}

// brokerLimits is the broker's Limits from the configuration.
func (c *config) brokerLimits() broker.Limits {
	return broker.Limits{
		PublishRate: float64(c.MQTTDeviceRate), PublishBurst: c.MQTTDeviceBurst,
		ByteRate: float64(c.MQTTDeviceBytes), ByteBurst: c.MQTTDeviceBytesBurst,
		MaxThrottle: c.MQTTThrottleMax,
		ConnectRate: float64(c.MQTTConnectRate), ConnectBurst: c.MQTTConnectBurst,
		WriteTimeout: c.MQTTWriteTimeout,
	}
}

// parseCommand parses a command's arguments: the shared configuration plus
// the flags own defines.
func parseCommand(name string, args []string, getenv func(string) string, stderr io.Writer, own func(*flag.FlagSet)) (config, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	if err := bindConfig(fs, &cfg, getenv); err != nil {
		return cfg, err
	}
	if own != nil {
		own(fs)
	}
	if err := fs.Parse(args); err != nil {
		return cfg, errUsage
	}
	return cfg, nil
}

// appURL derives the URL of the row-level-security role from the owner's URL.
func (c *config) appURL() (string, error) {
	if c.AppDatabaseURL != "" {
		return c.AppDatabaseURL, nil
	}
	u, err := url.Parse(c.DatabaseURL)
	if err != nil || u.Scheme == "" {
		return "", fmt.Errorf("database URL %q is not a URL such as postgres://user@host:5432/db", redact(c.DatabaseURL))
	}
	u.User = url.User("nxcloud_app")
	return u.String(), nil
}

// redact hides a URL's password.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}

func newFlagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("nxcloud", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}
