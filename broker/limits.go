package broker

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Limits are the broker's defences against hostile or broken clients
// (docs/mqtt.md "Limits"). Zero values take the defaults noted; a negative
// rate switches that limit off.
type Limits struct {
	// PublishRate and PublishBurst bound the publishes of one device (all its
	// connections together) per second (default 200, burst 1000).
	PublishRate  float64
	PublishBurst int
	// ByteRate and ByteBurst bound the publish bytes (topic and payload) of
	// one device per second (default 2 MiB/s, burst 8 MiB and at least one
	// packet of the maximum size).
	ByteRate  float64
	ByteBurst int
	// MaxThrottle is the longest a QoS≥1 publish over a device's rate is held
	// (its connection's reading paused) before the client is disconnected
	// instead (default 5s). QoS 0 over the rate is dropped at once.
	MaxThrottle time.Duration
	// ConnectRate and ConnectBurst bound new connections per source address
	// (IPv4 address, IPv6 /64) per second (default 50, burst 1000: a site behind one NAT address reconnects at once).
	ConnectRate  float64
	ConnectBurst int
	// MaxAddresses bounds the per-address table (default 65536); addresses
	// beyond it share one bucket.
	MaxAddresses int
	// WriteTimeout closes a connection when one write to it does not complete
	// within it: a client that stops reading (default 30s).
	WriteTimeout time.Duration
}

func (l *Limits) setDefaults(maxPacket uint32) {
	def := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	defInt := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.PublishRate, 200)
	defInt(&l.PublishBurst, 1000)
	def(&l.ByteRate, 2<<20)
	defInt(&l.ByteBurst, 8<<20)
	l.ByteBurst = max(l.ByteBurst, int(min(maxPacket, 1<<30)))
	if l.MaxThrottle <= 0 {
		l.MaxThrottle = 5 * time.Second
	}
	def(&l.ConnectRate, 50)
	defInt(&l.ConnectBurst, 1000)
	defInt(&l.MaxAddresses, 65536)
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = 30 * time.Second
	}
}

// LimitStats count what the limits refused, dropped or slowed.
type LimitStats struct {
	Throttled       int64         // QoS≥1 publishes held until the device's rate allowed them
	ThrottledFor    time.Duration // total time publishes were held
	RateDisconnects int64         // clients disconnected because a publish would have been held longer than MaxThrottle
	RateDropped     int64         // QoS 0 publishes dropped over the device's rate
	ConnectsRefused int64         // connections refused over their address's connect rate
	SlowReaders     int64         // connections closed because a write to them timed out
	TooLarge        int64         // connections closed for a packet over the maximum size
	Addresses       int64         // source addresses tracked right now
}

// bucket is a token bucket; its owner serialises access.
type bucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func newBucket(rate float64, burst int, now time.Time) bucket {
	return bucket{rate: rate, burst: float64(burst), tokens: float64(burst), last: now}
}

func (b *bucket) refill(now time.Time) {
	if now.After(b.last) {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
	}
}

// wait returns how long until n tokens are available (0: now). A disabled
// bucket (rate ≤ 0) never waits.
func (b *bucket) wait(now time.Time, n float64) time.Duration {
	if b.rate <= 0 {
		return 0
	}
	b.refill(now)
	if b.tokens >= n {
		return 0
	}
	return time.Duration((n - b.tokens) / b.rate * float64(time.Second))
}

// take spends n tokens, possibly into debt that later waits repay.
func (b *bucket) take(n float64) {
	if b.rate > 0 {
		b.tokens -= n
	}
}

// full reports whether the bucket has refilled completely, i.e. forgetting
// it changes nothing.
func (b *bucket) full(now time.Time) bool {
	b.refill(now)
	return b.tokens >= b.burst
}

// deviceLimit is the publish budget of one device, shared by its connections.
type deviceLimit struct {
	mu          sync.Mutex
	msgs, bytes bucket
	refs        int // connections using it; guarded by limits.mu
}

// limits enforces Limits. It is a mochi hook registered before the device
// hook, so a publish it rejects never reaches the Sink, and it gates the
// listeners' accept paths.
type limits struct {
	mqtt.HookBase
	cfg       Limits
	maxPacket uint32
	stop      <-chan struct{}
	kick      func(*mqtt.Client, packets.Code) // Broker.kick

	mu      sync.Mutex
	devices map[string]*deviceLimit       // by MQTT username (= device, once authenticated)
	clients map[*mqtt.Client]*deviceLimit // connections that have published

	addrMu   sync.Mutex
	addrs    map[netip.Addr]*bucket
	overflow bucket        // shared by addresses beyond MaxAddresses
	refusals chan struct{} // bounds goroutines answering refused sockets

	throttled, throttledNanos, rateDisconnects, rateDropped atomic.Int64
	connectsRefused, slowReaders, tooLarge                  atomic.Int64
}

func newLimits(cfg Limits, maxPacket uint32, stop <-chan struct{}, kick func(*mqtt.Client, packets.Code)) *limits {
	return &limits{
		cfg:       cfg,
		maxPacket: maxPacket,
		stop:      stop,
		kick:      kick,
		devices:   map[string]*deviceLimit{},
		clients:   map[*mqtt.Client]*deviceLimit{},
		addrs:     map[netip.Addr]*bucket{},
		overflow:  newBucket(cfg.ConnectRate, cfg.ConnectBurst, time.Now()),
		refusals:  make(chan struct{}, 256),
	}
}

func (l *limits) stats() LimitStats {
	l.addrMu.Lock()
	n := len(l.addrs)
	l.addrMu.Unlock()
	return LimitStats{
		Throttled:       l.throttled.Load(),
		ThrottledFor:    time.Duration(l.throttledNanos.Load()),
		RateDisconnects: l.rateDisconnects.Load(),
		RateDropped:     l.rateDropped.Load(),
		ConnectsRefused: l.connectsRefused.Load(),
		SlowReaders:     l.slowReaders.Load(),
		TooLarge:        l.tooLarge.Load(),
		Addresses:       int64(n),
	}
}

// LimitStats returns the counters of the limits.
func (b *Broker) LimitStats() LimitStats { return b.limits.stats() }

// ID implements mqtt.Hook.
func (l *limits) ID() string { return "nxcloud-limits" }

// Provides implements mqtt.Hook.
func (l *limits) Provides(b byte) bool {
	return b == mqtt.OnPublish || b == mqtt.OnDisconnect || b == mqtt.OnPacketEncode
}

// OnPublish spends the device's publish budget. Within it, the publish goes
// on to the device hook. Over it, QoS 0 is dropped (counted); QoS≥1 is held
// here — mochi reads nothing more from this connection meanwhile, so the
// device's own TCP window slows it — until the budget allows it, and if that
// would take longer than MaxThrottle the client is disconnected (MQTT 5:
// DISCONNECT 0x96) without a PUBACK, so the device sends it again later.
// Nothing is acknowledged that is not handed on.
func (l *limits) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	d := l.device(cl)
	n := float64(len(pk.TopicName) + len(pk.Payload))
	now := time.Now()
	d.mu.Lock()
	wait := max(d.msgs.wait(now, 1), d.bytes.wait(now, n))
	ok := wait == 0 || (pk.FixedHeader.Qos > 0 && wait <= l.cfg.MaxThrottle)
	if ok {
		d.msgs.take(1)
		d.bytes.take(n)
	}
	d.mu.Unlock()
	switch {
	case wait == 0:
		return pk, nil
	case !ok && pk.FixedHeader.Qos == 0:
		l.rateDropped.Add(1)
		return pk, packets.ErrRejectPacket
	case !ok:
		l.rateDisconnects.Add(1)
		l.kick(cl, packets.ErrMessageRateTooHigh)
		return pk, packets.ErrRejectPacket
	}
	l.throttled.Add(1)
	l.throttledNanos.Add(int64(wait))
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return pk, nil
	case <-l.stop:
		return pk, packets.ErrRejectPacket // shutting down: no PUBACK
	}
}

// device returns the budget of cl's device, shared by all connections with
// the same (authenticated) username.
func (l *limits) device(cl *mqtt.Client) *deviceLimit {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d := l.clients[cl]; d != nil {
		return d
	}
	key := string(cl.Properties.Username)
	d := l.devices[key]
	if d == nil {
		now := time.Now()
		d = &deviceLimit{msgs: newBucket(l.cfg.PublishRate, l.cfg.PublishBurst, now), bytes: newBucket(l.cfg.ByteRate, l.cfg.ByteBurst, now)}
		l.devices[key] = d
	}
	d.refs++
	l.clients[cl] = d
	return d
}

// OnDisconnect releases the connection's share of its device budget and
// counts connections closed for an oversized packet.
func (l *limits) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if errors.Is(err, packets.ErrPacketTooLarge) {
		l.tooLarge.Add(1)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.clients[cl]
	if d == nil {
		return
	}
	delete(l.clients, cl)
	if d.refs--; d.refs == 0 {
		delete(l.devices, string(cl.Properties.Username))
	}
}

// OnPacketEncode tells MQTT 5 clients the maximum packet size in a
// successful CONNACK (mochi does not), so that they do not send larger ones.
func (l *limits) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode == 0 && cl.Properties.ProtocolVersion == 5 {
		pk.Properties.MaximumPacketSize = l.maxPacket
	}
	return pk
}

// addrKey is the unit of the connect rate: an IPv4 address or an IPv6 /64.
func addrKey(remote string) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}, false
	}
	ip := ap.Addr().Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		ip = p.Addr()
	}
	return ip, true
}

// admit takes a connect token for the source address of a new socket.
func (l *limits) admit(remote string) bool {
	if l == nil || l.cfg.ConnectRate <= 0 {
		return true
	}
	ip, ok := addrKey(remote)
	if !ok {
		return true // not an IP socket (tests, pipes)
	}
	now := time.Now()
	l.addrMu.Lock()
	defer l.addrMu.Unlock()
	b := l.addrs[ip]
	if b == nil {
		if len(l.addrs) >= l.cfg.MaxAddresses {
			l.sweep(now)
		}
		if len(l.addrs) < l.cfg.MaxAddresses {
			nb := newBucket(l.cfg.ConnectRate, l.cfg.ConnectBurst, now)
			b = &nb
			l.addrs[ip] = b
		} else {
			b = &l.overflow
		}
	}
	if b.wait(now, 1) > 0 {
		l.connectsRefused.Add(1)
		return false
	}
	b.take(1)
	return true
}

// sweep forgets addresses whose bucket has refilled (forgetting them changes
// nothing); addrMu must be held. It runs only when the table is full, so
// its cost is spread over at least the entries it frees, or the overflow
// bucket takes over.
func (l *limits) sweep(now time.Time) {
	for ip, b := range l.addrs {
		if b.full(now) {
			delete(l.addrs, ip)
		}
	}
}

// refuse answers a socket over its address's connect rate without handing
// it to mochi: it reads the start of CONNECT for the protocol version, sends
// CONNACK "connection rate exceeded" (MQTT 5: 0x9F; 3.1.1: 0x03 server
// unavailable) and closes. At most 256 refusals run at once; beyond, the
// socket is closed without an answer.
func (l *limits) refuse(c net.Conn) {
	select {
	case l.refusals <- struct{}{}:
	default:
		_ = c.Close()
		return
	}
	go func() {
		defer func() { <-l.refusals }()
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if v, ok := readConnectVersion(c); ok {
			_, _ = c.Write(refusalConnack(v))
		}
	}()
}

// refusalConnack is the CONNACK refusing a connection over the connect rate.
func refusalConnack(version byte) []byte {
	if version == 5 {
		// reason 0x9F, properties: reason string
		reason := packets.ErrConnectionRateExceeded.Reason
		props := append([]byte{0x1F, 0, byte(len(reason))}, reason...)
		body := append([]byte{0, 0x9F, byte(len(props))}, props...)
		return append([]byte{0x20, byte(len(body))}, body...)
	}
	return []byte{0x20, 2, 0, 3} // 3.1(.1): server unavailable
}

// readConnectVersion reads a CONNECT's fixed header, protocol name and
// protocol level, and returns the level (3, 4 or 5).
func readConnectVersion(r io.Reader) (byte, bool) {
	var b [1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil || b[0] != 0x10 {
		return 0, false
	}
	for range 4 { // remaining length, 1 to 4 bytes
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, false
		}
		if b[0]&0x80 == 0 {
			break
		}
	}
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, false
	}
	n := int(hdr[0])<<8 | int(hdr[1])
	if n > 6 {
		return 0, false
	}
	name := make([]byte, n+1)
	if _, err := io.ReadFull(r, name); err != nil {
		return 0, false
	}
	if !bytes.Equal(name[:n], []byte("MQTT")) && !bytes.Equal(name[:n], []byte("MQIsdp")) {
		return 0, false
	}
	return name[n], true
}

// wrap bounds the writes of a connection.
func (l *limits) wrap(c net.Conn) net.Conn {
	if l == nil {
		return c
	}
	return &deadlineConn{Conn: c, timeout: l.cfg.WriteTimeout, l: l}
}

// deadlineConn bounds every write: a client that stops reading has its
// connection closed after WriteTimeout instead of holding mochi's writer
// (and, through the client's lock, its reader) forever. mochi's write loop
// ignores write errors, so the connection is closed here.
type deadlineConn struct {
	net.Conn
	timeout time.Duration
	l       *limits
	// explicit is a deadline set through SetWriteDeadline/SetDeadline (unix
	// nanoseconds; 0 none), which a write never extends.
	explicit atomic.Int64
	closed   atomic.Bool
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	d := time.Now().Add(c.timeout)
	if ex := c.explicit.Load(); ex != 0 && ex < d.UnixNano() {
		d = time.Unix(0, ex)
	}
	_ = c.Conn.SetWriteDeadline(d)
	n, err := c.Conn.Write(p)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			if c.closed.CompareAndSwap(false, true) {
				c.l.slowReaders.Add(1)
			}
			// Reset rather than linger: the kernel drops what the client
			// never read instead of holding it (megabytes) in FIN-WAIT-1.
			if tc, ok := c.Conn.(interface{ SetLinger(int) error }); ok {
				_ = tc.SetLinger(0)
			}
		}
		_ = c.Conn.Close()
	}
	return n, err
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.explicit.Store(unixNanoOrZero(t))
	return c.Conn.SetWriteDeadline(t)
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.explicit.Store(unixNanoOrZero(t))
	return c.Conn.SetDeadline(t)
}

func unixNanoOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}
