package broker

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	pahopackets "github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// ---- harness ------------------------------------------------------------

type env struct {
	b        *Broker
	devices  *fakeDevices
	sink     *recordingSink
	presence *fakePresence
}

// Device credentials every test starts with. globex/press-1 shares its key
// with acme/press-1 to catch tenant mix-ups.
const (
	acme1 = "press-1@acme"
	acme2 = "press-2@acme"
	glob1 = "press-1@globex"
)

func start(t *testing.T, mod func(*Config)) *env {
	t.Helper()
	e := &env{devices: newFakeDevices(), sink: newSink(), presence: &fakePresence{}}
	e.devices.add("press-1", "acme", "s3cret-1")
	e.devices.add("press-2", "acme", "s3cret-2")
	e.devices.add("press-1", "globex", "s3cret-g")
	cfg := Config{
		TCPAddr:                "127.0.0.1:0",
		WSAddr:                 "127.0.0.1:0",
		ConnectTimeout:         2 * time.Second,
		RecheckEvery:           200 * time.Millisecond,
		ReceiveMaximum:         1024,
		MaxInflight:            1024,
		MaxClientWritesPending: 8192,
		SessionExpiry:          time.Hour,
		MessageExpiry:          time.Hour,
	}
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if mod != nil {
		mod(&cfg)
	}
	b, err := New(cfg, e.devices, e.sink, e.presence)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	e.b = b
	return e
}

var secrets = map[string]string{acme1: "s3cret-1", acme2: "s3cret-2", glob1: "s3cret-g"}

// client is a paho client plus a channel that reports a lost connection.
type client struct {
	paho.Client
	lost chan error
}

type clientOpt func(*paho.ClientOptions)

// dial connects an MQTT 3.1.1 paho client over TCP (or ws:// URLs via opts).
func (e *env) dial(t *testing.T, clientID, username, password string, opts ...clientOpt) (*client, error) {
	t.Helper()
	c := &client{lost: make(chan error, 1)}
	o := paho.NewClientOptions().
		AddBroker("tcp://" + e.b.TCPAddr()).
		SetClientID(clientID).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).
		SetKeepAlive(30 * time.Second).
		SetProtocolVersion(4).
		SetConnectionLostHandler(func(_ paho.Client, err error) { c.lost <- err })
	if username != "" {
		o.SetUsername(username).SetPassword(password)
	}
	for _, fn := range opts {
		fn(o)
	}
	c.Client = paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c, nil
}

// mustDial connects username with its right secret, client id = username.
func (e *env) mustDial(t *testing.T, username string, opts ...clientOpt) *client {
	t.Helper()
	c, err := e.dial(t, username, username, secrets[username], opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", username, err)
	}
	return c
}

func (c *client) publish(t *testing.T, topic string, qos byte, payload []byte) {
	t.Helper()
	tok := c.Publish(topic, qos, false, payload)
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("publish to %s timed out", topic)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("publish to %s: %v", topic, err)
	}
}

// subscribe returns the SUBACK code for filter and a channel of deliveries.
func (c *client) subscribe(t *testing.T, filter string) (byte, chan paho.Message) {
	t.Helper()
	got := make(chan paho.Message, 100)
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { got <- m })
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("subscribe %s timed out", filter)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	// paho keys the result by the filter without a "$share/group/" prefix.
	res := tok.(*paho.SubscribeToken).Result()
	if len(res) != 1 {
		t.Fatalf("subscribe %s: results %v", filter, res)
	}
	for _, code := range res {
		return code, got
	}
	return 0, got
}

// waitLost waits for the client's connection to drop.
func (c *client) waitLost(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case <-c.lost:
	case <-time.After(within):
		t.Fatalf("client still connected after %v", within)
	}
}

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ---- connection tests ---------------------------------------------------

func TestConnectAuthentication(t *testing.T) {
	e := start(t, nil)
	wrong := tenants.Identity{TenantSlug: "acme", DeviceKey: "press-2", DeviceID: uuid.New(), Active: true}
	e.devices.setIdentity("liar@acme", "pw", wrong) // resolves to another device
	e.devices.add("off", "acme", "pw")
	e.devices.disable("off", "acme")

	cases := []struct {
		name, user, pass string
		opts             []clientOpt
		want             error // nil: accepted
	}{
		{"right password", acme1, "s3cret-1", nil, nil},
		{"wrong password", acme1, "nope", nil, pahopackets.ErrorRefusedBadUsernameOrPassword},
		{"unknown user", "ghost@acme", "s3cret-1", nil, pahopackets.ErrorRefusedBadUsernameOrPassword},
		{"anonymous", "", "", nil, pahopackets.ErrorRefusedBadUsernameOrPassword},
		{"username without tenant", "press-1", "s3cret-1", nil, pahopackets.ErrorRefusedBadUsernameOrPassword},
		{"wildcard username", "+@acme", "s3cret-1", nil, pahopackets.ErrorRefusedBadUsernameOrPassword},
		{"identity does not match username", "liar@acme", "pw", nil, pahopackets.ErrorRefusedNotAuthorised},
		{"disabled device", "off@acme", "pw", nil, pahopackets.ErrorRefusedNotAuthorised},
		{"registry outage", "broken@acme", "pw", nil, pahopackets.ErrorRefusedServerUnavailable},
		{"will on own state", acme1, "s3cret-1", []clientOpt{func(o *paho.ClientOptions) {
			o.SetWill("v1/acme/press-1/state", `{"online":false}`, 1, true)
		}}, nil},
		{"will on another device's cmd", acme1, "s3cret-1", []clientOpt{func(o *paho.ClientOptions) {
			o.SetWill("v1/acme/press-2/cmd/stop", "x", 1, false)
		}}, pahopackets.ErrorRefusedNotAuthorised},
		{"client id of mochi's inline client", acme1, "s3cret-1", []clientOpt{func(o *paho.ClientOptions) {
			o.SetClientID("inline")
		}}, pahopackets.ErrorRefusedIDRejected},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl, err := e.dial(t, fmt.Sprintf("auth-%d", i), c.user, c.pass, c.opts...)
			if c.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				cl.Disconnect(50)
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("connect error = %v, want %v", err, c.want)
			}
		})
	}
	if got := e.b.Stats().AuthRefused; got != int64(len(cases)-2) {
		t.Errorf("AuthRefused = %d, want %d", got, len(cases)-2)
	}
}

func TestClientIDTakeoverRefused(t *testing.T) {
	e := start(t, nil)
	a, err := e.dial(t, "plc-1", acme1, secrets[acme1])
	if err != nil {
		t.Fatal(err)
	}
	// Another device of the same tenant, and one of another tenant, try the id.
	for _, u := range []string{acme2, glob1} {
		if _, err := e.dial(t, "plc-1", u, secrets[u]); !errors.Is(err, pahopackets.ErrorRefusedIDRejected) {
			t.Fatalf("%s took client id plc-1: %v", u, err)
		}
	}
	// The original is still connected and still heard.
	if !a.IsConnectionOpen() {
		t.Fatal("original client lost its connection")
	}
	a.publish(t, "v1/acme/press-1/telemetry", 1, []byte(`{"metrics":{"t":1}}`))
	if m := e.sink.next(t); m.Identity.DeviceKey != "press-1" || m.Identity.TenantSlug != "acme" {
		t.Fatalf("message from %+v", m.Identity)
	}
	select {
	case err := <-a.lost:
		t.Fatalf("original client lost its connection: %v", err)
	default:
	}

	// The same device may take over its own session.
	a2, err := e.dial(t, "plc-1", acme1, secrets[acme1])
	if err != nil {
		t.Fatalf("same device reconnecting: %v", err)
	}
	a.waitLost(t, 10*time.Second)
	a2.publish(t, "v1/acme/press-1/state", 1, []byte(`{}`))
	if m := e.sink.next(t); m.Topic.Kind != KindState {
		t.Fatalf("got %+v", m.Topic)
	}

	// A persisted session (clean session off) keeps the id reserved while
	// its device is offline.
	p, err := e.dial(t, "plc-2", acme1, secrets[acme1], func(o *paho.ClientOptions) { o.SetCleanSession(false) })
	if err != nil {
		t.Fatal(err)
	}
	p.Disconnect(50)
	eventually(t, "session to go offline", func() bool { return e.b.Stats().ClientsConnected == 1 })
	if _, err := e.dial(t, "plc-2", acme2, secrets[acme2]); !errors.Is(err, pahopackets.ErrorRefusedIDRejected) {
		t.Fatalf("another device took a persisted session's id: %v", err)
	}
	if _, err := e.dial(t, "plc-2", acme1, secrets[acme1]); err != nil {
		t.Fatalf("owner resuming its session: %v", err)
	}
}

func TestDisabledDeviceIsDisconnected(t *testing.T) {
	e := start(t, nil)
	a := e.mustDial(t, acme1)
	other := e.mustDial(t, acme2)

	e.devices.disable("press-1", "acme")
	a.waitLost(t, 10*time.Second) // RecheckEvery is 200ms
	if _, err := e.dial(t, "again", acme1, secrets[acme1]); !errors.Is(err, pahopackets.ErrorRefusedNotAuthorised) {
		t.Fatalf("disabled device reconnected: %v", err)
	}
	if got := e.b.Stats().Revoked; got != 1 {
		t.Errorf("Revoked = %d, want 1", got)
	}
	// Other devices are untouched.
	other.publish(t, "v1/acme/press-2/telemetry", 1, []byte(`{}`))
	if m := e.sink.next(t); m.Identity.DeviceKey != "press-2" {
		t.Fatalf("got %+v", m.Identity)
	}
	if !other.IsConnectionOpen() {
		t.Fatal("an active device was disconnected")
	}
}

func TestPresence(t *testing.T) {
	e := start(t, nil)
	a := e.mustDial(t, acme1)
	// The callback runs once the session is established, after the CONNACK.
	eventually(t, "a's connect", func() bool { return len(e.presence.snapshot()) == 1 })
	b := e.mustDial(t, glob1)
	eventually(t, "b's connect", func() bool { return len(e.presence.snapshot()) == 2 })
	a.Disconnect(50)
	eventually(t, "a's disconnect", func() bool { return len(e.presence.snapshot()) == 3 })
	b.Disconnect(50)
	eventually(t, "b's disconnect", func() bool { return len(e.presence.snapshot()) == 4 })
	want := []presenceEvent{{true, acme1}, {true, glob1}, {false, acme1}, {false, glob1}}
	if got := e.presence.snapshot(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("presence events = %v, want %v", got, want)
	}
}

func TestConnectTimeout(t *testing.T) {
	e := start(t, func(c *Config) { c.ConnectTimeout = 300 * time.Millisecond })
	conn, err := net.Dial("tcp", e.b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Never send CONNECT: the broker must hang up on its own.
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("broker kept a socket that never sent CONNECT")
	}
	if err == nil {
		t.Fatal("broker sent data before CONNECT")
	}

	// The deadline ends at CONNECT: a client that is quiet for longer than
	// ConnectTimeout afterwards stays connected.
	c := e.mustDial(t, acme1)
	time.Sleep(3 * 300 * time.Millisecond)
	if !c.IsConnectionOpen() {
		t.Fatal("connected client was dropped by the CONNECT deadline")
	}
	c.publish(t, "v1/acme/press-1/telemetry", 1, []byte(`{}`))
	e.sink.next(t)
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	base := settledGoroutines()
	func() {
		e := start(t, nil)
		tcp := e.mustDial(t, acme1)
		ws := e.mustDial(t, acme2, func(o *paho.ClientOptions) {
			o.Servers = nil
			o.AddBroker("ws://" + e.b.WSAddr() + "/mqtt")
		})
		if code, _ := ws.subscribe(t, "v1/acme/press-2/cmd/#"); code != 1 {
			t.Fatalf("SUBACK %#x", code)
		}
		tcp.publish(t, "v1/acme/press-1/telemetry", 1, []byte(`{}`))
		e.sink.next(t)
		// A socket that never sends CONNECT must not hold Close up.
		raw, err := net.Dial("tcp", e.b.TCPAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		done := make(chan struct{})
		go func() { _ = e.b.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not return")
		}
		tcp.waitLost(t, 10*time.Second)
		ws.waitLost(t, 10*time.Second)
		if err := e.b.Publish("v1/acme/press-1/cmd/x", nil, false, 0); apps.Code(err) != apps.Unavailable {
			t.Errorf("Publish after Close: %v", err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base+2 {
		if time.Now().After(deadline) {
			var buf bytes.Buffer
			_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
			t.Fatalf("goroutines: %d before, %d after Close\n%s", base, runtime.NumGoroutine(), buf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// settledGoroutines waits for goroutines left by earlier tests to finish.
func settledGoroutines() int {
	n := runtime.NumGoroutine()
	for range 50 {
		time.Sleep(20 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			return n
		}
		n = m
	}
	return n
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{TCPAddr: ":0"}, nil, newSink(), nil); err == nil {
		t.Error("New accepted nil Devices")
	}
	if _, err := New(Config{}, newFakeDevices(), newSink(), nil); err == nil {
		t.Error("New accepted no listener")
	}
	// Close before Start must not hang or panic.
	b, err := New(Config{TCPAddr: "127.0.0.1:0"}, newFakeDevices(), newSink(), nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	_ = b.Close()
	if b.TCPAddr() != "" || b.Start() == nil {
		t.Error("a closed broker started")
	}
}
