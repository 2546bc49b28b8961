package broker

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// ---- raw MQTT 5 client (mochi's codec), for reason codes paho 3.1.1 cannot see

type raw5 struct {
	net.Conn
	r *bufio.Reader
}

func dial5(t *testing.T, addr, clientID, username, password string) (*raw5, packets.Packet) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &raw5{Conn: conn, r: bufio.NewReader(conn)}
	c.send(t, packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: clientID,
			UsernameFlag: true, Username: []byte(username), PasswordFlag: true, Password: []byte(password),
		},
	})
	return c, c.read(t)
}

func (c *raw5) send(t *testing.T, pk packets.Packet) {
	t.Helper()
	pk.ProtocolVersion = 5
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	}
	if err == nil {
		_, err = c.Write(buf.Bytes())
	}
	if err != nil {
		t.Fatal(err)
	}
}

// read returns the next packet, or a zero packet with an error type when the
// connection ends.
func (c *raw5) read(t *testing.T) packets.Packet {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var pk packets.Packet
	b, err := c.r.ReadByte()
	if err == nil {
		err = pk.FixedHeader.Decode(b)
	}
	if err == nil {
		pk.FixedHeader.Remaining, _, err = packets.DecodeLength(c.r)
	}
	body := make([]byte, pk.FixedHeader.Remaining)
	if err == nil {
		_, err = io.ReadFull(c.r, body)
	}
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("no packet from the broker")
		}
		return packets.Packet{}
	}
	pk.ProtocolVersion = 5
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	}
	if err != nil {
		t.Fatal(err)
	}
	return pk
}

func TestMQTT5ReasonCodes(t *testing.T) {
	e := start(t, nil)
	e.devices.add("off", "acme", "pw")
	e.devices.disable("off", "acme")
	addr := e.b.TCPAddr()

	for _, c := range []struct {
		name, id, user, pass string
		want                 byte
	}{
		{"wrong password", "v5-a", acme1, "nope", packets.ErrBadUsernameOrPassword.Code},
		{"disabled", "v5-b", "off@acme", "pw", packets.ErrNotAuthorized.Code},
		{"inline client id", "inline", acme1, secrets[acme1], packets.ErrClientIdentifierNotValid.Code},
	} {
		if _, ack := dial5(t, addr, c.id, c.user, c.pass); ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != c.want {
			t.Errorf("%s: got packet type %d reason %#x, want CONNACK %#x", c.name, ack.FixedHeader.Type, ack.ReasonCode, c.want)
		}
	}

	c, ack := dial5(t, addr, "v5-ok", acme1, secrets[acme1])
	if ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("connect: type %d reason %#x", ack.FixedHeader.Type, ack.ReasonCode)
	}
	c.send(t, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		PacketID:    7,
		Filters:     packets.Subscriptions{{Filter: "v1/acme/press-1/cmd/#", Qos: 1}, {Filter: "#", Qos: 1}, {Filter: "$SYS/#"}},
	})
	sub := c.read(t)
	if want := []byte{1, 0x87, 0x87}; sub.FixedHeader.Type != packets.Suback || !bytes.Equal(sub.ReasonCodes, want) {
		t.Fatalf("SUBACK type %d codes %#v, want %#v", sub.FixedHeader.Type, sub.ReasonCodes, want)
	}
	// A publish to another device's topic gets a "not authorized" PUBACK.
	c.send(t, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		PacketID:    8, TopicName: "v1/acme/press-2/telemetry", Payload: []byte(`{}`),
	})
	if ack := c.read(t); ack.FixedHeader.Type != packets.Puback || ack.ReasonCode != packets.ErrNotAuthorized.Code {
		t.Fatalf("PUBACK type %d reason %#x", ack.FixedHeader.Type, ack.ReasonCode)
	}
	// Disabling the device ends the session with DISCONNECT "not authorized".
	e.devices.disable("press-1", "acme")
	if d := c.read(t); d.FixedHeader.Type != packets.Disconnect || d.ReasonCode != packets.ErrNotAuthorized.Code {
		t.Fatalf("got packet type %d reason %#x, want DISCONNECT 0x87", d.FixedHeader.Type, d.ReasonCode)
	}
	if len(e.sink.messages()) != 0 {
		t.Fatal("the sink saw a refused publish")
	}
}

func TestWillReachesSink(t *testing.T) {
	e := start(t, nil)
	conn, err := net.Dial("tcp", e.b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	c := &raw5{Conn: conn, r: bufio.NewReader(conn)}
	c.send(t, packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "will-1",
			UsernameFlag: true, Username: []byte(acme1), PasswordFlag: true, Password: []byte(secrets[acme1]),
			WillFlag: true, WillTopic: "v1/acme/press-1/state", WillPayload: []byte(`{"online":false}`), WillQos: 1, WillRetain: true,
		},
	})
	if ack := c.read(t); ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("connect: type %d reason %#x", ack.FixedHeader.Type, ack.ReasonCode)
	}
	conn.Close() // without DISCONNECT: the will is due
	m := e.sink.next(t)
	if m.Topic.Kind != KindState || string(m.Payload) != `{"online":false}` || m.Identity.DeviceKey != "press-1" {
		t.Fatalf("got %+v %q", m.Topic, m.Payload)
	}
	assertNoDeviceRetained(t, e.b)
}

// assertNoDeviceRetained checks that only mochi's own $SYS topics are retained.
func assertNoDeviceRetained(t *testing.T, b *Broker) {
	t.Helper()
	for k := range b.server.Topics.Retained.GetAll() {
		if !strings.HasPrefix(k, "$SYS") {
			t.Fatalf("the broker retained a device message on %s", k)
		}
	}
}
