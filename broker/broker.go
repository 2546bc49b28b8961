// Package broker runs the embedded MQTT broker (mochi-mqtt) devices connect
// to: it authenticates each connection against the device registry, confines
// every device to its own topics (deny by default), hands accepted publishes
// to a Sink without fanning them out, and cuts off devices disabled while
// connected.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Devices resolves device credentials (implemented elsewhere with a cache).
type Devices interface {
	// Authenticate checks an MQTT username (format "<device-key>@<tenant-slug>") and password (the device secret).
	// Returns an *apps.Error with code apps.Unauthorized for unknown device / wrong secret.
	Authenticate(ctx context.Context, username string, password []byte) (tenants.Identity, error)
	// Lookup resolves an MQTT username to its device without a password: it
	// re-attaches sessions restored from the session store after a restart
	// to their devices. Errors: not_found.
	Lookup(ctx context.Context, username string) (tenants.Identity, error)
	// Identities returns the current state of many devices in one call (the
	// re-validation round that disconnects devices disabled while connected);
	// a device that no longer exists is absent.
	Identities(ctx context.Context, deviceIDs []uuid.UUID) (map[uuid.UUID]tenants.Identity, error)
}

// Message is an accepted publish from a device.
type Message struct {
	Identity tenants.Identity
	Topic    Topic
	// Payload is owned by the receiver: mochi decodes every packet into a
	// fresh buffer (clients.go ReadPacket) and the broker neither retains nor
	// forwards device publishes, so nothing else holds it.
	Payload  []byte
	QoS      byte
	Received time.Time
}

// Sink takes accepted publishes. Handle must not block for long: it decodes and enqueues.
// A non-nil error for a QoS≥1 message means "not accepted": the broker then withholds the
// PUBACK and disconnects the client so the device re-sends (DESIGN §10). For QoS 0 an
// error means the message is dropped (and counted).
type Sink interface {
	Handle(ctx context.Context, m Message) error
}

// Presence is told when devices connect and disconnect (optional, may be nil).
// Calls come in pairs per connection and are never concurrent. A device may
// hold several connections (distinct client ids), and when it takes over its
// own session the old connection's Disconnected precedes the new one's
// Connected — count connections per device rather than keeping a flag.
type Presence interface {
	Connected(id tenants.Identity, remote string)
	Disconnected(id tenants.Identity)
}

// Admission enforces a tenant's hard MQTT quotas (metering): both return an
// apps.Error with code quota_exceeded to refuse, and must be fast and never
// block on an outage of what backs them.
type Admission interface {
	AdmitConnect(ctx context.Context, tenant uuid.UUID) error
	AdmitPublish(ctx context.Context, tenant uuid.UUID, points int) error
}

// Config configures the broker. Zero values take the defaults noted.
type Config struct {
	TCPAddr string // e.g. ":1883"; "" disables; port 0 picks a free port (see TCPAddr)
	WSAddr  string // WebSocket listener, e.g. ":8083"; "" disables; port 0 works too
	// MaxPacketSize bounds one MQTT packet (default 2 MiB). Payload limits
	// are ingest's business (it dead-letters), so keep this well above them.
	MaxPacketSize uint32
	// ConnectTimeout closes a socket that has not sent CONNECT (and bounds
	// the credential check) within it (default 10s); mochi has no such deadline.
	ConnectTimeout time.Duration
	// RecheckEvery is how often connected clients are re-validated via
	// Devices.Identity (default 2s).
	RecheckEvery time.Duration
	MaxClients   int // default 20000
	// ReceiveMaximum bounds unacknowledged QoS>0 publishes per client in each
	// direction of mochi's quota; MaxInflight bounds stored outbound QoS>0
	// messages per client (defaults 1024 and 1024).
	ReceiveMaximum, MaxInflight uint16
	MaxClientWritesPending      int           // deliveries queued per client (default 256; mochi sizes a channel per connection by it)
	SessionExpiry               time.Duration // maximum session expiry (default 24h)
	MessageExpiry               time.Duration // maximum message expiry (default 24h)
	Limits                      Limits        // against hostile clients (limits.go)
	// SessionStore is the file of a local store (bbolt) that keeps persistent
	// sessions (clean session false / session expiry > 0): subscriptions and
	// QoS 1 commands queued for offline devices survive a restart. Empty keeps
	// sessions in memory only.
	SessionStore string
	// Admission, when set, refuses connections and publishes over a
	// tenant's hard quota.
	Admission Admission
	Logger    *slog.Logger // nil discards
}

func (c *Config) setDefaults() {
	if c.MaxPacketSize == 0 {
		c.MaxPacketSize = 2 << 20
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.RecheckEvery <= 0 {
		c.RecheckEvery = 2 * time.Second
	}
	if c.MaxClients <= 0 {
		c.MaxClients = 20000
	}
	if c.ReceiveMaximum == 0 {
		c.ReceiveMaximum = 1024
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = 1024
	}
	if c.MaxClientWritesPending <= 0 {
		c.MaxClientWritesPending = 256
	}
	if c.SessionExpiry <= 0 {
		c.SessionExpiry = 24 * time.Hour
	}
	if c.MessageExpiry <= 0 {
		c.MessageExpiry = 24 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.Limits.setDefaults(c.MaxPacketSize)
}

// Stats are counters for metrics.
type Stats struct {
	ClientsConnected int64 // authenticated connections right now
	Received         int64 // publishes the Sink accepted
	Rejected         int64 // publishes the Sink refused (QoS≥1 ones also cost the client its connection)
	Dropped          int64 // QoS 0 publishes the Sink refused (included in Rejected)
	ACLDenied        int64 // publishes, subscriptions and deliveries refused by the ACL
	AuthRefused      int64 // CONNECTs refused
	Revoked          int64 // clients cut off because their device was disabled or removed
	QuotaRefused     int64 // connections and publishes refused over a tenant's hard quota
}

// Broker is the embedded MQTT broker.
type Broker struct {
	cfg    Config
	log    *slog.Logger
	server *mqtt.Server
	hook   *hook
	limits *limits

	// stopCtx ends the recheck loop and pending credential checks first on
	// Close; sinkCtx (passed to Sink.Handle) only after the clients are gone.
	stopCtx    context.Context
	stop       context.CancelFunc
	sinkCtx    context.Context
	cancelSink context.CancelFunc

	mu        sync.Mutex
	started   bool
	closed    atomic.Bool
	closeOnce sync.Once
	tcp, ws   *listener
	loopDone  chan struct{}
}

// sysTopicInterval makes mochi publish $SYS once at start and then not for a
// year: it cannot be switched off, each publish runs runtime.ReadMemStats, and
// no device may subscribe to $SYS anyway.
const sysTopicInterval = 365 * 24 * 60 * 60

// New returns a broker that authenticates with devices, hands publishes to
// sink and reports connections to presence (which may be nil). It does not
// listen until Start.
func New(cfg Config, devices Devices, sink Sink, presence Presence) (*Broker, error) {
	if devices == nil || sink == nil {
		return nil, errors.New("broker: devices and sink are required")
	}
	if cfg.TCPAddr == "" && cfg.WSAddr == "" {
		return nil, errors.New("broker: no listener configured")
	}
	cfg.setDefaults()

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClients = int64(cfg.MaxClients)
	caps.MaximumPacketSize = cfg.MaxPacketSize
	caps.MaximumClientWritesPending = int32(min(cfg.MaxClientWritesPending, 1<<30))
	caps.ReceiveMaximum = cfg.ReceiveMaximum
	caps.MaximumInflight = cfg.MaxInflight
	caps.MaximumSessionExpiryInterval = uint32(min(cfg.SessionExpiry/time.Second, 1<<32-1))
	caps.MaximumMessageExpiryInterval = int64(cfg.MessageExpiry / time.Second)
	// Inbound topic aliases would let a client publish under a topic name the
	// ACL never saw (mochi checks the ACL before resolving the alias,
	// server.go processPublish); mochi does not advertise an alias maximum in
	// CONNACK either, so clients must not use them.
	caps.TopicAliasMaximum = 0
	caps.SharedSubAvailable = 0 // cosmetic in mochi; the ACL refuses $share/...
	caps.Compatibilities.ObscureNotAuthorized = false
	caps.Compatibilities.PassiveClientDisconnect = false // DisconnectClient must close the socket
	caps.Compatibilities.NoInheritedPropertiesOnAck = true

	stopCtx, stop := context.WithCancel(context.Background())
	sinkCtx, cancelSink := context.WithCancel(context.Background())
	b := &Broker{
		cfg:        cfg,
		log:        cfg.Logger,
		stopCtx:    stopCtx,
		stop:       stop,
		sinkCtx:    sinkCtx,
		cancelSink: cancelSink,
		loopDone:   make(chan struct{}),
	}
	b.server = mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		Logger:                 slog.New(quietHandler{h: cfg.Logger.Handler()}),
		SysTopicResendInterval: sysTopicInterval,
		InlineClient:           true, // for Publish
	})
	// The limits hook runs first: a publish it rejects never reaches the Sink.
	b.limits = newLimits(cfg.Limits, cfg.MaxPacketSize, stopCtx.Done(), b.kick)
	if err := b.server.AddHook(b.limits, nil); err != nil {
		return nil, fmt.Errorf("broker: add limits hook: %w", err)
	}
	b.hook = &hook{
		b:        b,
		devices:  devices,
		sink:     sink,
		presence: presence,
		byClient: map[*mqtt.Client]*conn{},
		byID:     map[string]*conn{},
	}
	if err := b.server.AddHook(b.hook, nil); err != nil {
		return nil, fmt.Errorf("broker: add hook: %w", err)
	}
	if cfg.SessionStore != "" {
		if err := os.MkdirAll(filepath.Dir(cfg.SessionStore), 0o700); err != nil {
			return nil, fmt.Errorf("broker: session store: %w", err)
		}
		err := b.server.AddHook(newSessionStore(), &bolt.Options{Path: cfg.SessionStore,
			Options: &bbolt.Options{Timeout: 5 * time.Second}})
		if err != nil {
			return nil, fmt.Errorf("broker: session store %s: %w (is another nxcloud using it? set NXCLOUD_MQTT_SESSION_STORE)", cfg.SessionStore, err)
		}
	}
	return b, nil
}

// Start binds the configured listeners and starts serving; it does not block.
func (b *Broker) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started || b.closed.Load() {
		return errors.New("broker: already started or closed")
	}
	var lns []*listener
	fail := func(err error) error {
		for _, l := range lns {
			_ = l.ln.Close()
		}
		b.tcp, b.ws = nil, nil
		return err
	}
	for _, a := range []struct {
		id, addr string
		ws       bool
	}{{"tcp", b.cfg.TCPAddr, false}, {"ws", b.cfg.WSAddr, true}} {
		if a.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", a.addr)
		if err != nil {
			return fail(fmt.Errorf("broker: listen %s on %s: %w", a.id, a.addr, err))
		}
		l := newListener(a.id, ln, a.ws, b.cfg.ConnectTimeout, b.disconnectListener, b.log)
		l.limits = b.limits
		lns = append(lns, l)
		if a.ws {
			b.ws = l
		} else {
			b.tcp = l
		}
	}
	for _, l := range lns {
		if err := b.server.AddListener(l); err != nil {
			return fail(fmt.Errorf("broker: add listener %s: %w", l.id, err))
		}
	}
	if err := b.server.Serve(); err != nil {
		return fail(fmt.Errorf("broker: serve: %w", err))
	}
	b.hook.restore(b.stopCtx)
	b.started = true
	go b.recheckLoop()
	return nil
}

// TCPAddr returns the bound TCP address ("127.0.0.1:54321"), or "" when the
// TCP listener is disabled or not started.
func (b *Broker) TCPAddr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tcp == nil {
		return ""
	}
	return b.tcp.Address()
}

// WSAddr returns the bound WebSocket address, or "" when disabled or not started.
func (b *Broker) WSAddr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ws == nil {
		return ""
	}
	return b.ws.Address()
}

// Publish sends a downlink message from the platform to the subscribers of
// topic, which must be a command topic (v1/{tenant}/{device}/cmd/{name}).
// qos caps the delivery QoS per subscriber. Errors: invalid (topic, qos),
// unavailable (broker closed).
func (b *Broker) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if b.closed.Load() {
		return apps.Errorf(apps.Unavailable, "broker is closed")
	}
	t, err := ParseTopic(topic)
	if err != nil {
		return err
	}
	if t.Kind != KindCmd {
		return topicError("the platform publishes only to command topics")
	}
	if qos > 2 {
		return apps.FieldError("qos", "qos must be 0, 1 or 2")
	}
	// mochi copies the packet, payload included, for each subscriber and for
	// the retained store before returning (server.go publishToClient,
	// retainMessage), so the caller may reuse payload afterwards.
	return b.server.Publish(topic, payload, retain, qos)
}

// Close stops accepting connections, disconnects every client and waits for
// their goroutines to end. It is safe to call more than once.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		b.stop()
		b.mu.Lock()
		started := b.started
		b.mu.Unlock()
		if started {
			<-b.loopDone
		}
		// Closes our listeners (which disconnect their clients and wait for
		// every connection goroutine), then stops mochi's event loop.
		_ = b.server.Close()
		b.cancelSink()
	})
	return nil
}

// Stats returns the current counters.
func (b *Broker) Stats() Stats {
	h := b.hook
	return Stats{
		ClientsConnected: atomic.LoadInt64(&b.server.Info.ClientsConnected),
		Received:         h.received.Load(),
		Rejected:         h.rejected.Load(),
		Dropped:          h.dropped.Load(),
		ACLDenied:        h.aclDenied.Load(),
		AuthRefused:      h.authRefused.Load(),
		Revoked:          h.revoked.Load(),
		QuotaRefused:     h.quotaRefused.Load(),
	}
}

// disconnectListener disconnects the established clients of one listener. It
// replaces mochi's closeListenerClients, whose Clients.GetByListener takes
// the clients read lock twice (clients.go) and can deadlock against a
// concurrent Add or Delete.
func (b *Broker) disconnectListener(id string) {
	for _, cl := range b.server.Clients.GetAll() {
		if cl.Net.Listener == id && !cl.Net.Inline && !cl.Closed() {
			b.kick(cl, packets.ErrServerShuttingDown)
		}
	}
}

// kick disconnects a client: an MQTT 5 client is told why (a server
// DISCONNECT does not exist in 3.1.1), then the socket is closed. The write
// is bounded so a client that does not read cannot stall the caller.
func (b *Broker) kick(cl *mqtt.Client, code packets.Code) {
	if cl.Net.Conn != nil && cl.Properties.ProtocolVersion == 5 && !cl.Closed() {
		_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		_ = b.server.DisconnectClient(cl, code)
	}
	cl.Stop(code)
}

// recheckLoop re-validates connected clients every RecheckEvery, so a device
// disabled while connected is cut off within seconds.
func (b *Broker) recheckLoop() {
	defer close(b.loopDone)
	t := time.NewTicker(b.cfg.RecheckEvery)
	defer t.Stop()
	for {
		select {
		case <-b.stopCtx.Done():
			return
		case <-t.C:
			b.recheck()
		}
	}
}

// recheckBatch bounds the devices re-validated by one query.
const recheckBatch = 5000

// recheck re-validates every connected device: one query per few thousand
// devices (a query per device cost ~2 500 queries a second at 10 000
// connections and doubled the tail latency of everyone else).
func (b *Broker) recheck() {
	conns := b.hook.online()
	live := conns[:0]
	for _, c := range conns {
		// If mochi lost track of this connection (it removes a clean
		// session by client id after a takeover it may not have flagged
		// yet, server.go attachClient), commands could no longer reach it:
		// make it reconnect.
		if cur, ok := b.server.Clients.Get(c.cl.ID); !ok || cur != c.cl {
			b.kick(c.cl, packets.ErrSessionTakenOver)
			continue
		}
		live = append(live, c)
	}
	for start := 0; start < len(live) && b.stopCtx.Err() == nil; start += recheckBatch {
		chunk := live[start:min(start+recheckBatch, len(live))]
		ids := make([]uuid.UUID, 0, len(chunk))
		seen := map[uuid.UUID]bool{}
		for _, c := range chunk {
			if !seen[c.id.DeviceID] {
				seen[c.id.DeviceID] = true
				ids = append(ids, c.id.DeviceID)
			}
		}
		ctx, cancel := context.WithTimeout(b.stopCtx, b.cfg.RecheckEvery+5*time.Second)
		cur, err := b.hook.devices.Identities(ctx, ids)
		cancel()
		if err != nil {
			// A registry outage must not disconnect the whole fleet; the
			// next round tries again.
			if b.stopCtx.Err() == nil {
				b.log.Warn("broker: re-validating connected devices", "devices", len(ids), "error", err)
			}
			return
		}
		for _, c := range chunk {
			old := c.id
			now, ok := cur[old.DeviceID]
			if ok && now.Active && now.TenantID == old.TenantID && now.TenantSlug == old.TenantSlug && now.DeviceKey == old.DeviceKey {
				continue
			}
			if !b.hook.revoke(c) {
				continue
			}
			b.log.Info("broker: device disabled, disconnecting", "device", old.DeviceID, "tenant", old.TenantSlug, "client", c.cl.ID)
			b.kick(c.cl, packets.ErrNotAuthorized)
		}
	}
}

// quietHandler passes mochi's warnings and errors on, minus the packet dumps
// mochi attaches to them ("pk", "packet": the whole payload, server.go
// receivePacket), and drops its info and debug chatter.
type quietHandler struct{ h slog.Handler }

func (q quietHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && q.h.Enabled(ctx, l)
}

func (q quietHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, "mqtt: "+r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "pk" && a.Key != "packet" && a.Key != "will" {
			out.AddAttrs(a)
		}
		return true
	})
	return q.h.Handle(ctx, out)
}

func (q quietHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return quietHandler{h: q.h.WithAttrs(as)}
}

func (q quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{h: q.h.WithGroup(name)}
}
