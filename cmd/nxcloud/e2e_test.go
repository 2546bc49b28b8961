package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// startTestPlatform runs the whole platform (broker, ingest, API) on port-0
// listeners against the test database and Redis.
func startTestPlatform(t *testing.T) *platform {
	t.Helper()
	tenanttest.New(t) // fails with instructions when the services are missing
	var cfg config
	fs := newFlagSet()
	_ = bindConfig(fs, &cfg, func(string) string { return "" })
	cfg.DatabaseURL = os.Getenv("NXCLOUD_TEST_DATABASE_URL")
	cfg.RedisURL = os.Getenv("NXCLOUD_TEST_REDIS_URL")
	cfg.IngestSpoolDir = t.TempDir()
	cfg.MQTTSessionStore = filepath.Join(t.TempDir(), "sessions.db")
	cfg.HTTPAddr, cfg.MQTTAddr, cfg.MQTTWSAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.IngestFlush = 10 * time.Millisecond
	cfg.AuthCacheTTL = 200 * time.Millisecond
	cfg.OperatorToken = "test-operator-token"
	log, _ := newLogger(io.Discard, "error", "text")
	p, err := startPlatform(context.Background(), cfg, log, platformOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.shutdown(); err != nil {
			t.Error(err)
		}
	})
	return p
}

func mqttURL(p *platform) string {
	_, port, _ := net.SplitHostPort(p.broker.TCPAddr())
	return "tcp://127.0.0.1:" + port
}

func connect(t *testing.T, p *platform, user, password string) (mqtt.Client, error) {
	t.Helper()
	opts := mqtt.NewClientOptions().AddBroker(mqttURL(p)).SetClientID(user).SetUsername(user).SetPassword(password).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second)
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	tok.WaitTimeout(10 * time.Second)
	if tok.Error() != nil {
		return nil, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c, nil
}

func publish(t *testing.T, c mqtt.Client, topic string, payload []byte) {
	t.Helper()
	tok := c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish to %s: %v", topic, tok.Error())
	}
}

func getJSON(t *testing.T, p *platform, key, path string, out any) int {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+p.httpLn.Addr().String()+path, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatalf("GET %s: %v in %s", path, err, body)
		}
	}
	return resp.StatusCode
}

// eventually polls f until it returns "" or the deadline passes.
func eventually(t *testing.T, what string, f func() string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		msg := f()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type deadLetters struct {
	Items []struct {
		Device string `json:"device"`
		Reason string `json:"reason"`
		Detail string `json:"detail"`
		Topic  string `json:"topic"`
	} `json:"items"`
}

// TestEndToEnd drives the platform as devices and a user would: MQTT in, HTTP
// out, with the hostile inputs of the foundation issue.
func TestEndToEnd(t *testing.T) {
	p := startTestPlatform(t)
	env := &tenanttest.Env{Tenants: p.tenants}
	tn := env.NewTenant(t)
	env.Device(t, tn, "sinter-01", "sintering-furnace")
	env.Device(t, tn, "sinter-02", "sintering-furnace")
	ctx := context.Background()
	// Known secrets for the test's devices.
	_, s1, err := p.tenants.RotateSecret(ctx, tn.ID, "sinter-01")
	if err != nil {
		t.Fatal(err)
	}
	_, s2, err := p.tenants.RotateSecret(ctx, tn.ID, "sinter-02")
	if err != nil {
		t.Fatal(err)
	}
	u1, u2 := tenants.MQTTUsername("sinter-01", tn.Slug), tenants.MQTTUsername("sinter-02", tn.Slug)

	if _, err := connect(t, p, u1, "wrong-password"); err == nil {
		t.Fatal("wrong password accepted")
	}
	c1, err := connect(t, p, u1, s1)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := connect(t, p, u2, s2)
	if err != nil {
		t.Fatal(err)
	}
	topic1 := "v1/" + tn.Slug + "/sinter-01/telemetry"

	// The hostile inputs, each on the same connection, each followed by proof
	// that the connection still works.
	big := `{"metrics":{"zone1_temp":1050,"pad":"` + strings.Repeat("x", 1<<20) + `"}}`
	hostile := []struct{ payload, reason string }{
		{`{"metrics":{"zone1_temp":10`, "malformed_json"},
		{`{"metrics":{"no_such_metric":1}}`, "unknown_metric"},
		{`{"metrics":{"zone1_temp":NaN}}`, "malformed_json"},
		{`{"metrics":{"zone1_temp":"NaN"}}`, "not_a_number"},
		{`{"metrics":{"zone1_temp":1e400}}`, "non_finite"},
		{`{"metrics":{"zone1_temp":"1050"}}`, "not_a_number"},
		{big, "payload_too_large"},
		{`{"ts":"3000-01-01T00:00:00Z","metrics":{"zone1_temp":1050}}`, "timestamp_out_of_window"},
		{`{"metrics":{"zone1_temp":99999}}`, "out_of_range"},
	}
	for _, h := range hostile {
		publish(t, c1, topic1, []byte(h.payload))
	}
	// A mixed message keeps its valid metric.
	now := time.Now().UTC().Truncate(time.Millisecond)
	publish(t, c1, topic1, []byte(fmt.Sprintf(`{"ts":%d,"metrics":{"zone1_temp":1061.5,"bogus":2}}`, now.UnixMilli())))
	// An array, and the other device at the same time.
	publish(t, c1, topic1, []byte(fmt.Sprintf(`[{"ts":%d,"metrics":{"zone2_temp":1062}},{"ts":"%s","metrics":{"zone2_temp":1063}}]`,
		now.Add(time.Second).UnixMilli(), now.Add(2*time.Second).Format(time.RFC3339Nano))))
	publish(t, c2, "v1/"+tn.Slug+"/sinter-02/telemetry", []byte(`{"metrics":{"zone1_temp":1070}}`))
	if !c1.IsConnectionOpen() || !c2.IsConnectionOpen() {
		t.Fatal("a hostile payload cost a connection")
	}

	eventually(t, "dead letters", func() string {
		var dl deadLetters
		if code := getJSON(t, p, tn.APIKey, "/api/v1/dead-letters?device=sinter-01&limit=100", &dl); code != 200 {
			return fmt.Sprint("status ", code)
		}
		want := map[string]int{"unknown_metric": 2}
		for _, h := range hostile {
			want[h.reason]++
		}
		want["unknown_metric"]-- // counted once above, once for "bogus"
		got := map[string]int{}
		for _, x := range dl.Items {
			got[x.Reason]++
			if x.Device != "sinter-01" || x.Topic != topic1 || x.Detail == "" {
				return fmt.Sprintf("dead letter %+v", x)
			}
		}
		for r, n := range want {
			if got[r] != n {
				return fmt.Sprintf("reasons %v, want %v", got, want)
			}
		}
		return ""
	})

	eventually(t, "raw series", func() string {
		var raw struct {
			Points []struct {
				TS    time.Time `json:"ts"`
				Value float64   `json:"value"`
			} `json:"points"`
		}
		getJSON(t, p, tn.APIKey, "/api/v1/devices/sinter-01/series?metric=zone1_temp", &raw)
		if len(raw.Points) != 1 || raw.Points[0].Value != 1061.5 || !raw.Points[0].TS.Equal(now) {
			return fmt.Sprintf("zone1_temp points %+v", raw.Points)
		}
		var b struct {
			Series []struct {
				Metric  string `json:"metric"`
				Buckets []struct {
					Count int     `json:"count"`
					Max   float64 `json:"max"`
				} `json:"buckets"`
			} `json:"series"`
		}
		getJSON(t, p, tn.APIKey, "/api/v1/devices/sinter-01/buckets?width=1h&metric=zone2_temp", &b)
		if len(b.Series) != 1 || len(b.Series[0].Buckets) == 0 {
			return fmt.Sprintf("buckets %+v", b)
		}
		n, mx := 0, 0.0
		for _, x := range b.Series[0].Buckets {
			n += x.Count
			mx = max(mx, x.Max)
		}
		if n != 2 || mx != 1063 {
			return fmt.Sprintf("zone2 buckets %+v", b.Series[0].Buckets)
		}
		return ""
	})

	// Device 2 cannot publish under device 1's topic, nor another tenant's.
	other := env.NewTenant(t)
	env.Device(t, other, "sinter-01", "sintering-furnace")
	c2.Publish(topic1, 1, false, `{"metrics":{"zone3_temp":1111}}`).WaitTimeout(2 * time.Second)
	c2.Publish("v1/"+other.Slug+"/sinter-01/telemetry", 1, false, `{"metrics":{"zone3_temp":1111}}`).WaitTimeout(2 * time.Second)
	for _, sub := range []string{"v1/" + tn.Slug + "/sinter-01/cmd/#", "v1/" + other.Slug + "/sinter-01/cmd/#", "#", "$SYS/#"} {
		tok := c1.Subscribe(sub, 1, nil)
		tok.WaitTimeout(5 * time.Second)
		if sub == "v1/"+tn.Slug+"/sinter-01/cmd/#" {
			continue // its own: allowed
		}
		if r := tok.(*mqtt.SubscribeToken).Result()[sub]; r != 0x80 {
			t.Errorf("subscribe %s: granted %#x, want 0x80", sub, r)
		}
	}
	time.Sleep(300 * time.Millisecond)
	for _, who := range []tenanttest.Tenant{tn, other} {
		var raw struct {
			Points []any `json:"points"`
		}
		getJSON(t, p, who.APIKey, "/api/v1/devices/sinter-01/series?metric=zone3_temp", &raw)
		if len(raw.Points) != 0 {
			t.Fatalf("a device published under another's topic: %+v", raw.Points)
		}
	}

	// Downlink: a command reaches the device; its reply is stored as an event.
	got := make(chan string, 1)
	c1.Subscribe("v1/"+tn.Slug+"/sinter-01/cmd/+", 1, func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) }).Wait()
	if err := p.broker.Publish("v1/"+tn.Slug+"/sinter-01/cmd/recipe", []byte(`{"version":3}`), false, 1); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m != `{"version":3}` {
			t.Fatalf("command payload %s", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("command not delivered")
	}
	publish(t, c1, "v1/"+tn.Slug+"/sinter-01/cmd/recipe/reply", []byte(`{"status":"applied"}`))
	publish(t, c1, "v1/"+tn.Slug+"/sinter-01/events", []byte(`{"type":"lot_start","lot":"L-1"}`))
	eventually(t, "events stored", func() string {
		var kinds []string
		rows, err := p.sys.Query(ctx, `SELECT kind || ':' || name FROM device_events WHERE tenant_id = $1 ORDER BY id`, tn.ID)
		if err != nil {
			return err.Error()
		}
		defer rows.Close()
		for rows.Next() {
			var k string
			rows.Scan(&k)
			kinds = append(kinds, k)
		}
		if strings.Join(kinds, ",") != "cmd_reply:recipe,event:" {
			return fmt.Sprint(kinds)
		}
		return ""
	})

	// The device list shows both devices online with their latest values.
	eventually(t, "device states", func() string {
		var list struct {
			Items []struct {
				Key    string `json:"key"`
				Online bool   `json:"online"`
				Latest []struct {
					Metric string  `json:"metric"`
					Value  float64 `json:"value"`
				} `json:"latest"`
			} `json:"items"`
		}
		getJSON(t, p, tn.APIKey, "/api/v1/devices", &list)
		if len(list.Items) != 2 {
			return fmt.Sprintf("devices %+v", list.Items)
		}
		for _, d := range list.Items {
			if !d.Online || len(d.Latest) == 0 {
				return fmt.Sprintf("device %+v", d)
			}
		}
		return ""
	})

	// A disabled device is cut off within seconds and cannot reconnect.
	if _, err := p.tenants.SetDeviceStatus(ctx, tn.ID, "sinter-02", "disabled"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "disabled device disconnected", func() string {
		if c2.IsConnectionOpen() {
			return "still connected"
		}
		return ""
	})
	if _, err := connect(t, p, u2, s2); err == nil {
		t.Fatal("disabled device reconnected")
	}
}

// TestShutdownFlushesIngest: points acknowledged before shutdown are committed
// by it.
func TestShutdownFlushesIngest(t *testing.T) {
	tenanttest.New(t)
	var cfg config
	_ = bindConfig(newFlagSet(), &cfg, func(string) string { return "" })
	cfg.DatabaseURL = os.Getenv("NXCLOUD_TEST_DATABASE_URL")
	cfg.RedisURL = os.Getenv("NXCLOUD_TEST_REDIS_URL")
	cfg.IngestSpoolDir = t.TempDir()
	cfg.MQTTSessionStore = filepath.Join(t.TempDir(), "sessions.db")
	cfg.HTTPAddr, cfg.MQTTAddr, cfg.MQTTWSAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.IngestFlush = time.Hour // nothing is written before shutdown
	cfg.IngestBatch = 1 << 30
	log, _ := newLogger(io.Discard, "error", "text")
	p, err := startPlatform(context.Background(), cfg, log, platformOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env := &tenanttest.Env{Tenants: p.tenants}
	tn := env.NewTenant(t)
	env.Device(t, tn, "mill-01", "jet-mill")
	_, secret, _ := p.tenants.RotateSecret(context.Background(), tn.ID, "mill-01")
	c, err := connect(t, p, tenants.MQTTUsername("mill-01", tn.Slug), secret)
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	base := time.Now().Add(-time.Minute)
	for i := 0; i < n; i++ {
		publish(t, c, "v1/"+tn.Slug+"/mill-01/telemetry",
			[]byte(fmt.Sprintf(`{"ts":%d,"metrics":{"d50_um":3.8}}`, base.Add(time.Duration(i)*time.Millisecond).UnixMilli())))
	}
	c.Disconnect(50)
	if err := p.shutdown(); err != nil {
		t.Fatal(err)
	}
	check := tenanttest.New(t)
	var stored int
	if err := check.DB.System.QueryRow(context.Background(), `SELECT count(*) FROM telemetry WHERE tenant_id = $1`, tn.ID).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != n {
		t.Fatalf("%d of %d acknowledged points stored after shutdown", stored, n)
	}
}
