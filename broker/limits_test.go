package broker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	pahopackets "github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
)

// rawDial connects a raw MQTT client of protocol version (4 or 5) from the
// local address from (nil: any) and returns it with the broker's answer.
func rawDial(t *testing.T, addr string, from net.IP, version byte, clientID, username string) (*raw5, packets.Packet) {
	t.Helper()
	d := net.Dialer{}
	if from != nil {
		d.LocalAddr = &net.TCPAddr{IP: from}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &raw5{Conn: conn, r: bufio.NewReader(conn)}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: version,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: clientID,
			UsernameFlag: true, Username: []byte(username), PasswordFlag: true, Password: []byte(secrets[username]),
		},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	return c, readV(t, c, version)
}

// readV is raw5.read for either protocol version.
func readV(t *testing.T, c *raw5, version byte) packets.Packet {
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
		t.Fatalf("no packet from the broker: %v", err)
	}
	pk.ProtocolVersion = version
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	}
	if err != nil {
		t.Fatal(err)
	}
	return pk
}

// waitClosed reads from c until the broker closes it.
func waitClosed(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64<<10)
	total := 0
	for {
		n, err := c.Read(buf)
		total += n
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the broker kept the connection open (%d bytes read)", total)
			}
			return
		}
	}
}

func TestQoS1OverRateIsSlowedAndKept(t *testing.T) {
	e := start(t, func(c *Config) {
		c.Limits = Limits{PublishRate: 20, PublishBurst: 2, MaxThrottle: time.Minute}
	})
	c := e.mustDial(t, acme1)
	const n = 30
	toks := make([]paho.Token, n)
	for i := range toks {
		toks[i] = c.Publish("v1/acme/press-1/telemetry", 1, false, []byte(fmt.Sprint(i)))
	}
	for i, tok := range toks {
		if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	got := e.sink.messages()
	if len(got) != n {
		t.Fatalf("sink has %d messages, want %d", len(got), n)
	}
	for i, m := range got {
		if string(m.Payload) != fmt.Sprint(i) {
			t.Fatalf("message %d is %q", i, m.Payload)
		}
	}
	s := e.b.LimitStats()
	if s.Throttled == 0 || s.ThrottledFor == 0 || s.RateDisconnects != 0 || s.RateDropped != 0 {
		t.Fatalf("limit stats %+v, want throttled publishes and nothing else", s)
	}
	if !c.IsConnectionOpen() {
		t.Fatal("a throttled client lost its connection")
	}
}

func TestQoS1BeyondThrottleBoundDisconnects(t *testing.T) {
	// A rate that does not refill during the test: once the burst is spent,
	// every publish would wait far longer than MaxThrottle.
	e := start(t, func(c *Config) {
		c.Limits = Limits{PublishRate: 0.001, PublishBurst: 3, MaxThrottle: time.Second}
	})

	// MQTT 5: the publish over the bound gets no PUBACK but DISCONNECT 0x96.
	c, ack := rawDial(t, e.b.TCPAddr(), nil, 5, "v5-rate", acme1)
	if ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("connect: type %d reason %#x", ack.FixedHeader.Type, ack.ReasonCode)
	}
	for id := uint16(1); id <= 4; id++ {
		c.send(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: id,
			TopicName: "v1/acme/press-1/telemetry", Payload: []byte(fmt.Sprint(id))})
	}
	for id := uint16(1); id <= 3; id++ {
		if pk := c.read(t); pk.FixedHeader.Type != packets.Puback || pk.PacketID != id || pk.ReasonCode != 0 {
			t.Fatalf("want PUBACK %d, got type %d id %d reason %#x", id, pk.FixedHeader.Type, pk.PacketID, pk.ReasonCode)
		}
	}
	if pk := c.read(t); pk.FixedHeader.Type != packets.Disconnect || pk.ReasonCode != packets.ErrMessageRateTooHigh.Code {
		t.Fatalf("want DISCONNECT 0x96, got type %d reason %#x", pk.FixedHeader.Type, pk.ReasonCode)
	}
	waitClosed(t, c)

	// MQTT 3.1.1 (another device, its own budget): the connection closes;
	// every publish that was acknowledged reached the sink.
	p := e.mustDial(t, acme2)
	var toks []paho.Token
	for i := range 6 {
		toks = append(toks, p.Publish("v1/acme/press-2/telemetry", 1, false, []byte(fmt.Sprint("b", i))))
	}
	p.waitLost(t, 10*time.Second)
	acked := map[string]bool{}
	for i, tok := range toks {
		if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
			acked[fmt.Sprint("b", i)] = true
		}
	}
	stored := map[string]bool{}
	for _, m := range e.sink.messages() {
		stored[string(m.Payload)] = true
	}
	for k := range acked {
		if !stored[k] {
			t.Errorf("publish %s was acknowledged but not handed on", k)
		}
	}
	if len(acked) > 3 {
		t.Errorf("%d publishes acknowledged beyond a burst of 3", len(acked))
	}
	for _, k := range []string{"4", "b3", "b4", "b5"} {
		if stored[k] {
			t.Errorf("publish %s over the limit reached the sink", k)
		}
	}
	if s := e.b.LimitStats(); s.RateDisconnects != 2 {
		t.Fatalf("RateDisconnects = %d, want 2", s.RateDisconnects)
	}
}

func TestQoS0OverRateIsDroppedAndCounted(t *testing.T) {
	e := start(t, func(c *Config) {
		c.Limits = Limits{PublishRate: 0.001, PublishBurst: 3}
	})
	c := e.mustDial(t, acme1)
	for i := range 10 {
		c.publish(t, "v1/acme/press-1/telemetry", 0, []byte(fmt.Sprint(i)))
	}
	eventually(t, "drops to be counted", func() bool { return e.b.LimitStats().RateDropped == 7 })
	var got []string
	for _, m := range e.sink.messages() {
		got = append(got, string(m.Payload))
	}
	if strings.Join(got, ",") != "0,1,2" {
		t.Fatalf("sink got %v, want the first 3", got)
	}
	if !c.IsConnectionOpen() {
		t.Fatal("dropping QoS 0 cost the connection")
	}

	// The budget is the device's, not the connection's: a second
	// connection of the same device gets nothing more, another device does.
	c2, err := e.dial(t, "press-1-second", acme1, secrets[acme1])
	if err != nil {
		t.Fatal(err)
	}
	c2.publish(t, "v1/acme/press-1/telemetry", 0, []byte("again"))
	for range 3 {
		e.sink.next(t) // the three accepted above
	}
	other := e.mustDial(t, acme2)
	other.publish(t, "v1/acme/press-2/telemetry", 1, []byte("other"))
	if m := e.sink.next(t); string(m.Payload) != "other" {
		t.Fatalf("got %q from %s", m.Payload, m.Identity.DeviceKey)
	}
	eventually(t, "the second connection's drop", func() bool { return e.b.LimitStats().RateDropped == 8 })
}

func TestConnectRatePerAddress(t *testing.T) {
	e := start(t, func(c *Config) {
		c.Limits = Limits{ConnectRate: 0.001, ConnectBurst: 3, MaxAddresses: 4}
	})
	addr := e.b.TCPAddr()
	// 127.0.0.1: three connections, then refusals with a reason.
	for i := range 3 {
		if _, err := e.dial(t, fmt.Sprint("storm-", i), acme1, secrets[acme1]); err != nil {
			t.Fatalf("connection %d within the burst: %v", i, err)
		}
	}
	if _, err := e.dial(t, "storm-3", acme1, secrets[acme1]); !errors.Is(err, pahopackets.ErrorRefusedServerUnavailable) {
		t.Fatalf("3.1.1 connect over the rate: %v, want server unavailable", err)
	}
	if _, ack := rawDial(t, addr, nil, 5, "storm-v5", acme1); ack.FixedHeader.Type != packets.Connack ||
		ack.ReasonCode != packets.ErrConnectionRateExceeded.Code || ack.Properties.ReasonString != "connection rate exceeded" {
		t.Fatalf("MQTT 5 connect over the rate: type %d reason %#x %q", ack.FixedHeader.Type, ack.ReasonCode, ack.Properties.ReasonString)
	}
	ws := websocket.Dialer{}
	if _, resp, err := ws.Dial("ws://"+e.b.WSAddr()+"/mqtt", nil); err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("WebSocket over the rate: %v", err)
	}
	if got := e.b.LimitStats().ConnectsRefused; got != 3 {
		t.Fatalf("ConnectsRefused = %d, want 3", got)
	}

	// Another address connects meanwhile.
	from2 := func(o *paho.ClientOptions) {
		o.SetDialer(&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}})
	}
	c, err := e.dial(t, "elsewhere", acme2, secrets[acme2], from2)
	if err != nil {
		t.Fatalf("another address was refused: %v", err)
	}
	c.publish(t, "v1/acme/press-2/telemetry", 1, []byte("x"))
	e.sink.next(t)

	// The table of addresses stays bounded: past MaxAddresses (4: .1 to
	// .4), new addresses share one bucket of the same burst (3).
	admitted := 0
	for i := 3; i < 12; i++ {
		_, ack := rawDial(t, addr, net.IPv4(127, 0, 0, byte(i)), 4, fmt.Sprint("many-", i), glob1)
		if ack.ReasonCode == 0 {
			admitted++
		} else if ack.ReasonCode != 3 { // 3.1.1 server unavailable
			t.Fatalf("127.0.0.%d: CONNACK %#x", i, ack.ReasonCode)
		}
	}
	if s := e.b.LimitStats(); s.Addresses != 4 || admitted != 2+3 || s.ConnectsRefused != 3+4 {
		t.Fatalf("stats %+v, %d admitted: want 4 addresses tracked, 5 admitted, 7 refused", s, admitted)
	}
}

func TestSlowReaderDoesNotBlockOthers(t *testing.T) {
	e := start(t, func(c *Config) {
		c.Limits = Limits{WriteTimeout: 500 * time.Millisecond}
	})
	// A device that subscribes to its commands and then never reads.
	slow, ack := rawDial(t, e.b.TCPAddr(), nil, 4, "slow", acme1)
	if ack.ReasonCode != 0 {
		t.Fatalf("connect: %#x", ack.ReasonCode)
	}
	_ = slow.Conn.(*net.TCPConn).SetReadBuffer(4096)
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, ProtocolVersion: 4,
		Filters: packets.Subscriptions{{Filter: "v1/acme/press-1/cmd/#", Qos: 1}}}
	var buf bytes.Buffer
	if err := sub.SubscribeEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := slow.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	if pk := readV(t, slow, 4); pk.FixedHeader.Type != packets.Suback {
		t.Fatalf("want SUBACK, got type %d", pk.FixedHeader.Type)
	}

	good := e.mustDial(t, acme2)
	_, deliveries := good.subscribe(t, "v1/acme/press-2/cmd/#")
	var got sync.WaitGroup
	const n = 100
	got.Add(1)
	go func() {
		defer got.Done()
		for range n {
			<-deliveries
		}
	}()

	// The platform floods the slow device (far more than socket buffers
	// hold) and commands the good one in between: no call blocks.
	big := bytes.Repeat([]byte("x"), 64<<10)
	published := make(chan struct{})
	go func() {
		defer close(published)
		for i := range 400 {
			if err := e.b.Publish("v1/acme/press-1/cmd/fill", big, false, 1); err != nil {
				t.Errorf("publish to the slow reader: %v", err)
				return
			}
			if i%4 == 0 {
				if err := e.b.Publish("v1/acme/press-2/cmd/go", []byte(fmt.Sprint(i)), false, 1); err != nil {
					t.Errorf("publish to the good device: %v", err)
					return
				}
			}
		}
	}()
	select {
	case <-published:
	case <-time.After(30 * time.Second):
		t.Fatal("Broker.Publish blocked behind a slow reader")
	}
	done := make(chan struct{})
	go func() { got.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the good device did not get its commands")
	}
	// Devices keep publishing meanwhile.
	g := e.mustDial(t, glob1)
	g.publish(t, "v1/globex/press-1/telemetry", 1, []byte("still here"))
	if m := e.sink.next(t); string(m.Payload) != "still here" {
		t.Fatalf("got %q", m.Payload)
	}
	// The slow reader is cut off once a write to it times out.
	eventually(t, "the slow reader to be disconnected", func() bool { return e.b.LimitStats().SlowReaders == 1 })
	waitClosed(t, slow)
	if !good.IsConnectionOpen() {
		t.Fatal("the good device lost its connection")
	}
}

func TestOversizedPacketRefused(t *testing.T) {
	const limit = 64 << 10
	e := start(t, func(c *Config) { c.MaxPacketSize = limit })
	big := bytes.Repeat([]byte("y"), limit)

	// MQTT 3.1.1: the connection closes, nothing reaches the sink.
	c := e.mustDial(t, acme1)
	tok := c.Publish("v1/acme/press-1/telemetry", 1, false, big)
	c.waitLost(t, 10*time.Second)
	if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
		t.Fatal("an oversized publish was acknowledged")
	}

	// MQTT 5: CONNACK announces the maximum; a larger packet closes the
	// connection before its body is read.
	r, ack := rawDial(t, e.b.TCPAddr(), nil, 5, "v5-big", acme2)
	if ack.ReasonCode != 0 || ack.Properties.MaximumPacketSize != limit {
		t.Fatalf("CONNACK reason %#x, maximum packet size %d, want %d", ack.ReasonCode, ack.Properties.MaximumPacketSize, limit)
	}
	// The fixed header of a QoS 1 PUBLISH claiming limit+1 bytes is enough.
	if _, err := r.Write([]byte{0x32, 0x81, 0x80, 0x04}); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, r)

	eventually(t, "both to be counted", func() bool { return e.b.LimitStats().TooLarge == 2 })
	if n := len(e.sink.messages()); n != 0 {
		t.Fatalf("the sink got %d messages", n)
	}
	// Just under the limit is fine.
	ok := e.mustDial(t, glob1)
	ok.publish(t, "v1/globex/press-1/telemetry", 1, big[:limit-100])
	if m := e.sink.next(t); len(m.Payload) != limit-100 {
		t.Fatalf("got %d bytes", len(m.Payload))
	}
}

func TestBucket(t *testing.T) {
	now := time.Unix(1000, 0)
	b := newBucket(10, 5, now)
	if b.wait(now, 5) != 0 {
		t.Fatal("a full bucket made 5 wait")
	}
	b.take(5)
	if w := b.wait(now, 1); w != 100*time.Millisecond {
		t.Fatalf("wait = %v, want 100ms", w)
	}
	b.take(1) // into debt
	if w := b.wait(now, 1); w != 200*time.Millisecond {
		t.Fatalf("wait after debt = %v, want 200ms", w)
	}
	if w := b.wait(now.Add(time.Second), 1); w != 0 {
		t.Fatalf("wait after refill = %v", w)
	}
	if !b.full(now.Add(time.Hour)) {
		t.Fatal("bucket not full after an hour")
	}
	off := newBucket(-1, 0, now)
	off.take(1e9)
	if off.wait(now, 1e9) != 0 {
		t.Fatal("a disabled bucket waits")
	}
}

func TestReadConnectVersion(t *testing.T) {
	for _, c := range []struct {
		in   []byte
		want byte
		ok   bool
	}{
		{[]byte{0x10, 0x10, 0, 4, 'M', 'Q', 'T', 'T', 5}, 5, true},
		{[]byte{0x10, 0x80, 0x01, 0, 4, 'M', 'Q', 'T', 'T', 4}, 4, true},
		{[]byte{0x10, 0x10, 0, 6, 'M', 'Q', 'I', 's', 'd', 'p', 3}, 3, true},
		{[]byte{0x30, 0x10, 0, 4, 'M', 'Q', 'T', 'T', 4}, 0, false}, // not CONNECT
		{[]byte{0x10, 0x10, 0, 4, 'H', 'T', 'T', 'P', 4}, 0, false},
		{[]byte{0x10, 0x10, 0xff, 0xff}, 0, false},
		{[]byte{0x10}, 0, false},
	} {
		v, ok := readConnectVersion(bytes.NewReader(c.in))
		if v != c.want || ok != c.ok {
			t.Errorf("%x: got %d %v, want %d %v", c.in, v, ok, c.want, c.ok)
		}
	}
}
