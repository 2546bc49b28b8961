package broker

import (
	"bytes"
	"errors"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/nxcloud/nxcloud/apps"
)

func TestPublishReachesSink(t *testing.T) {
	e := start(t, nil)
	c := e.mustDial(t, acme1)
	want := e.devices.byUN[acme1].id

	for _, p := range []struct {
		topic string
		qos   byte
		kind  string
		name  string
	}{
		{"v1/acme/press-1/telemetry", 1, KindTelemetry, ""},
		{"v1/acme/press-1/telemetry", 0, KindTelemetry, ""},
		{"v1/acme/press-1/events", 2, KindEvents, ""},
		{"v1/acme/press-1/state", 1, KindState, ""},
		{"v1/acme/press-1/cmd/recipe/reply", 1, KindCmdReply, "recipe"},
	} {
		payload := []byte(`{"metrics":{"temp":21.5},"topic":"` + p.topic + `"}`)
		before := time.Now()
		c.publish(t, p.topic, p.qos, payload)
		m := e.sink.next(t)
		if m.Identity != want {
			t.Errorf("%s: identity %+v, want %+v", p.topic, m.Identity, want)
		}
		if m.Topic != (Topic{"acme", "press-1", p.kind, p.name}) || m.QoS != p.qos || !bytes.Equal(m.Payload, payload) {
			t.Errorf("%s: got topic %+v qos %d payload %q", p.topic, m.Topic, m.QoS, m.Payload)
		}
		if m.Received.Before(before) {
			t.Errorf("%s: Received %v is before the publish", p.topic, m.Received)
		}
	}
	// A retained device publish is accepted but not retained by the broker.
	tok := c.Publish("v1/acme/press-1/state", 1, true, []byte(`{"mode":"auto"}`))
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("retained publish: %v", tok.Error())
	}
	e.sink.next(t)
	assertNoDeviceRetained(t, e.b)
	if got := e.b.Stats().Received; got != 6 {
		t.Errorf("Received = %d, want 6", got)
	}
}

func TestPublishOutsideOwnTopicsNeverReachesSink(t *testing.T) {
	e := start(t, nil)
	c := e.mustDial(t, acme1)
	// A subscriber that would see anything fanned out to its own topics.
	victim := e.mustDial(t, acme2)
	_, deliveries := victim.subscribe(t, "v1/acme/press-2/cmd/#")

	for _, topic := range []string{
		"v1/acme/press-2/telemetry",   // another device
		"v1/globex/press-1/telemetry", // same key, another tenant
		"v1/acme/press-2/cmd/stop",    // a forged command
		"v1/acme/press-1/cmd/recipe",  // commands come from the platform only
		"v1/acme/press-1/telemetry/x", // extra level
		"v1/acme/press-1/Telemetry",
		"$SYS/broker/version",
		"devices/press-1",
	} {
		c.publish(t, topic, 0, []byte(`{}`)) // QoS 0: silently dropped
	}
	// Publishes on one connection are handled in order, so once the marker
	// arrives every earlier publish has been decided.
	c.publish(t, "v1/acme/press-1/events", 0, []byte("marker"))
	if m := e.sink.next(t); string(m.Payload) != "marker" {
		t.Fatalf("the sink saw %s", m.Topic)
	}

	// On 3.1.1 a refused QoS 1 publish costs the connection (mochi cannot
	// send a failing PUBACK there); the sink still never sees it.
	tok := c.Publish("v1/acme/press-2/telemetry", 1, false, []byte(`{}`))
	c.waitLost(t, 10*time.Second)
	if tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
		t.Error("refused QoS 1 publish was acknowledged")
	}
	if n := len(e.sink.messages()); n != 1 {
		t.Fatalf("the sink saw %d messages, want only the marker", n)
	}
	select {
	case m := <-deliveries:
		t.Fatalf("forged message delivered to another device: %s", m.Topic())
	default:
	}
	if e.b.Stats().ACLDenied < 8 { // $SYS never reaches the ACL: mochi drops it first
		t.Errorf("ACLDenied = %d, want at least 8", e.b.Stats().ACLDenied)
	}
}

func TestSubscribeACL(t *testing.T) {
	e := start(t, nil)
	c := e.mustDial(t, acme1)
	for filter, want := range map[string]byte{
		"v1/acme/press-1/cmd/#":          1,
		"v1/acme/press-1/cmd/+":          1,
		"v1/acme/press-1/cmd/recipe":     1,
		"v1/acme/press-2/cmd/#":          0x80, // another device
		"v1/globex/press-1/cmd/#":        0x80, // same key, another tenant
		"v1/acme/press-1/telemetry":      0x80, // own telemetry
		"v1/acme/press-1/#":              0x80,
		"v1/acme/+/cmd/#":                0x80,
		"#":                              0x80,
		"+/+/+/cmd/#":                    0x80,
		"$SYS/#":                         0x80,
		"$share/g/v1/acme/press-1/cmd/#": 0x80,
	} {
		if got, _ := c.subscribe(t, filter); got != want {
			t.Errorf("SUBACK for %q = %#x, want %#x", filter, got, want)
		}
	}
	if !c.IsConnectionOpen() {
		t.Fatal("refused subscriptions cost the connection")
	}
}

func TestDownlinkPublish(t *testing.T) {
	e := start(t, nil)
	a := e.mustDial(t, acme1)
	b := e.mustDial(t, acme2)
	g := e.mustDial(t, glob1)
	_, toA := a.subscribe(t, "v1/acme/press-1/cmd/#")
	_, toB := b.subscribe(t, "v1/acme/press-2/cmd/+")
	_, toG := g.subscribe(t, "v1/globex/press-1/cmd/recipe")

	payload := []byte(`{"recipe":"R-7","version":3}`)
	if err := e.b.Publish("v1/acme/press-1/cmd/recipe", payload, false, 1); err != nil {
		t.Fatal(err)
	}
	payload[0] = 'X' // the broker must have copied it
	select {
	case m := <-toA:
		if m.Topic() != "v1/acme/press-1/cmd/recipe" || string(m.Payload()) != `{"recipe":"R-7","version":3}` || m.Qos() != 1 {
			t.Fatalf("got %s %q qos %d", m.Topic(), m.Payload(), m.Qos())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the command did not reach its device")
	}
	// Deliveries to one subscriber keep their order, so once each other
	// device has its own marker, a stray copy would have arrived before it.
	for _, x := range []struct {
		topic string
		ch    chan paho.Message
	}{{"v1/acme/press-2/cmd/marker", toB}, {"v1/globex/press-1/cmd/recipe", toG}} {
		if err := e.b.Publish(x.topic, []byte("marker"), false, 1); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-x.ch:
			if string(m.Payload()) != "marker" {
				t.Fatalf("%s got %s", x.topic, m.Topic())
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("marker to %s not delivered", x.topic)
		}
	}
	select {
	case m := <-toA:
		t.Fatalf("unexpected extra delivery %s", m.Topic())
	default:
	}

	for _, bad := range []string{"v1/acme/press-1/telemetry", "v1/acme/press-1/cmd/+", "$SYS/x", "v1/acme/press-1/cmd/x/reply"} {
		if err := e.b.Publish(bad, nil, false, 0); apps.Code(err) != apps.Invalid {
			t.Errorf("Publish(%q) = %v, want invalid", bad, err)
		}
	}
	if err := e.b.Publish("v1/acme/press-1/cmd/x", nil, false, 3); apps.Code(err) != apps.Invalid {
		t.Errorf("Publish with qos 3 = %v, want invalid", err)
	}
}

func TestSinkErrorWithholdsPuback(t *testing.T) {
	e := start(t, nil)
	c := e.mustDial(t, acme1)
	e.sink.setFail(func(m Message) error {
		if string(m.Payload) == "refuse" {
			return errors.New("storage unavailable")
		}
		return nil
	})

	// QoS 0: dropped and counted, the connection stays.
	c.publish(t, "v1/acme/press-1/telemetry", 0, []byte("refuse"))
	c.publish(t, "v1/acme/press-1/telemetry", 0, []byte("ok"))
	if m := e.sink.next(t); string(m.Payload) != "ok" {
		t.Fatalf("got %q", m.Payload)
	}
	if s := e.b.Stats(); s.Dropped != 1 || s.Rejected != 1 {
		t.Fatalf("stats %+v, want one dropped", s)
	}

	// QoS 1: no PUBACK, and the connection drops so the device re-sends.
	tok := c.Publish("v1/acme/press-1/telemetry", 1, false, []byte("refuse"))
	c.waitLost(t, 10*time.Second)
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("publish token never completed after the connection dropped")
	}
	if tok.Error() == nil {
		t.Fatal("a refused QoS 1 publish was acknowledged")
	}
	if s := e.b.Stats(); s.Rejected != 2 || s.Received != 1 {
		t.Fatalf("stats %+v, want 2 rejected, 1 received", s)
	}

	// The device reconnects and re-sends; now it is accepted.
	e.sink.setFail(nil)
	c2 := e.mustDial(t, acme1)
	c2.publish(t, "v1/acme/press-1/telemetry", 1, []byte("refuse"))
	if m := e.sink.next(t); string(m.Payload) != "refuse" {
		t.Fatalf("got %q", m.Payload)
	}
}

func TestLargePayload(t *testing.T) {
	e := start(t, nil)
	c := e.mustDial(t, acme1)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	c.publish(t, "v1/acme/press-1/telemetry", 1, big)
	m := e.sink.next(t)
	if !bytes.Equal(m.Payload, big) {
		t.Fatalf("payload of %d bytes arrived as %d bytes", len(big), len(m.Payload))
	}
	c.publish(t, "v1/acme/press-1/telemetry", 1, []byte("after"))
	if m := e.sink.next(t); string(m.Payload) != "after" {
		t.Fatalf("got %q", m.Payload)
	}
	if !c.IsConnectionOpen() {
		t.Fatal("a 1 MiB payload cost the connection")
	}
}

func TestWebSocket(t *testing.T) {
	e := start(t, nil)
	c := e.mustDial(t, glob1, func(o *paho.ClientOptions) {
		o.Servers = nil
		o.AddBroker("ws://" + e.b.WSAddr() + "/mqtt")
	})
	code, cmds := c.subscribe(t, "v1/globex/press-1/cmd/+")
	if code != 1 {
		t.Fatalf("SUBACK %#x", code)
	}
	if code, _ := c.subscribe(t, "v1/acme/press-1/cmd/+"); code != 0x80 {
		t.Fatalf("cross-tenant SUBACK %#x", code)
	}
	big := bytes.Repeat([]byte{'x'}, 300<<10)
	c.publish(t, "v1/globex/press-1/telemetry", 1, big)
	if m := e.sink.next(t); m.Identity.TenantSlug != "globex" || len(m.Payload) != len(big) {
		t.Fatalf("got %+v with %d bytes", m.Identity, len(m.Payload))
	}
	if err := e.b.Publish("v1/globex/press-1/cmd/start", []byte("go"), false, 1); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-cmds:
		if string(m.Payload()) != "go" {
			t.Fatalf("got %q", m.Payload())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("command not delivered over WebSocket")
	}
}
