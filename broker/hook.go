package broker

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// conn is one authenticated mochi client: a live connection, or the
// persisted session it left behind.
type conn struct {
	cl     *mqtt.Client
	id     tenants.Identity // as authenticated; never changes
	remote string

	// guarded by hook.mu
	revoked    bool // the device was disabled: deny everything
	closed     bool // OnDisconnect ran
	superseded bool // a newer connection of the same device took the client id

	// guarded by hook.presenceMu
	online bool  // Presence.Connected was reported, Disconnected not yet
	prev   *conn // the connection this one took over, until reported
}

// hook is the broker's only mochi hook: authentication, the deny-by-default
// ACL, the publish hand-off to the Sink, and presence.
type hook struct {
	mqtt.HookBase
	b        *Broker
	devices  Devices
	sink     Sink
	presence Presence

	mu       sync.RWMutex
	byClient map[*mqtt.Client]*conn // every client we authenticated, until its session ends
	byID     map[string]*conn       // which connection owns each client id

	presenceMu sync.Mutex

	received, rejected, dropped, aclDenied, authRefused, revoked, quotaRefused atomic.Int64
}

// ID implements mqtt.Hook.
func (h *hook) ID() string { return "nxcloud-device-auth" }

// Provides implements mqtt.Hook.
func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect,
		mqtt.OnConnectAuthenticate,
		mqtt.OnACLCheck,
		mqtt.OnSessionEstablished,
		mqtt.OnDisconnect,
		mqtt.OnClientExpired,
		mqtt.OnPublish,
		mqtt.OnWill,
		mqtt.OnWillSent,
	}, []byte{b})
}

// OnConnect authenticates the client. It runs before OnConnectAuthenticate
// so that a refusal can carry the right CONNACK code: returning false from
// OnConnectAuthenticate always answers "bad username or password", which
// mochi even maps to 3.1.1's "not authorized" (packets/codes.go V5CodesToV3),
// and a device told its credentials are wrong during a database outage may
// stop retrying. A returned error ends the connection without a CONNACK of
// mochi's own (server.go attachClient), so we send ours first.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	code := h.authenticate(cl, pk)
	if code == packets.CodeSuccess {
		return nil
	}
	h.authRefused.Add(1)
	_ = h.b.server.SendConnack(cl, connackCode(cl.Properties.ProtocolVersion, code), false, nil)
	return code
}

// connackCode picks the MQTT 5 code whose translation by mochi's V5CodesToV3
// table (packets/codes.go) gives a 3.1.1 client the intended return code 1-5;
// SendConnack sends a code missing from that table unchanged, which 3.1.1
// does not define.
func connackCode(version byte, c packets.Code) packets.Code {
	if version == 5 {
		return c
	}
	switch c {
	case packets.ErrBadUsernameOrPassword:
		return packets.ErrMalformedUsername // → 0x04 bad user name or password
	case packets.ErrNotAuthorized:
		return packets.ErrBadUsernameOrPassword // → 0x05 not authorized
	case packets.ErrClientIdentifierNotValid, packets.ErrServerUnavailable:
		return c // → 0x02, 0x03
	case packets.ErrQuotaExceeded:
		return packets.ErrServerUnavailable // 3.1.1 has no quota code: → 0x03
	}
	return packets.ErrServerUnavailable
}

func (h *hook) authenticate(cl *mqtt.Client, pk packets.Packet) packets.Code {
	if !pk.Connect.UsernameFlag || !pk.Connect.PasswordFlag {
		return packets.ErrBadUsernameOrPassword // anonymous
	}
	username := string(pk.Connect.Username)
	key, slug, ok := splitUsername(username)
	if !ok {
		return packets.ErrBadUsernameOrPassword
	}
	ctx, cancel := context.WithTimeout(h.b.stopCtx, h.b.cfg.ConnectTimeout)
	id, err := h.devices.Authenticate(ctx, username, pk.Connect.Password)
	cancel()
	if err != nil {
		switch apps.Code(err) {
		case apps.Unauthorized, apps.NotFound, apps.Invalid:
			return packets.ErrBadUsernameOrPassword
		case apps.Forbidden:
			return packets.ErrNotAuthorized
		}
		h.b.log.Warn("broker: authenticate device", "username", username, "error", err)
		return packets.ErrServerUnavailable
	}
	// The credential must resolve to exactly the tenant and device named by
	// the username, and to names the topic ACL can use as literal prefixes.
	if !id.Active || id.DeviceID == uuid.Nil || id.DeviceKey != key || id.TenantSlug != slug {
		return packets.ErrNotAuthorized
	}
	// mochi publishes a will without any ACL check (server.go sendLWT): a
	// will on another device's cmd topic would be a forged command.
	if pk.Connect.WillFlag && !mayPublish(slug, key, pk.Connect.WillTopic) {
		return packets.ErrNotAuthorized
	}
	if adm := h.b.cfg.Admission; adm != nil {
		actx, cancel := context.WithTimeout(h.b.stopCtx, h.b.cfg.ConnectTimeout)
		err := adm.AdmitConnect(actx, id.TenantID)
		cancel()
		if apps.Code(err) == apps.QuotaExceeded {
			h.quotaRefused.Add(1)
			h.b.log.Info("broker: connection refused over quota", "username", username, "reason", err.Error())
			return packets.ErrQuotaExceeded // MQTT 5: 0x97; 3.1.1: 3 server unavailable
		}
	}
	return h.claim(cl, id)
}

// claim makes cl the owner of its client id, unless another device holds
// that id (connected, or as a persisted session): mochi would otherwise hand
// the session, subscriptions and queued commands to the newcomer
// (server.go inheritClientSession). The same device may take over its own.
func (h *hook) claim(cl *mqtt.Client, id tenants.Identity) packets.Code {
	h.mu.Lock()
	defer h.mu.Unlock()
	owner := h.byID[cl.ID]
	if owner != nil {
		if owner.id.DeviceID != id.DeviceID {
			return packets.ErrClientIdentifierNotValid
		}
	} else if _, ok := h.b.server.Clients.Get(cl.ID); ok {
		// A session nobody owns: mochi's inline client (id "inline"), or
		// one whose end we saw but mochi has not removed yet.
		return packets.ErrClientIdentifierNotValid
	}
	c := &conn{cl: cl, id: id, remote: cl.Net.Remote}
	if owner != nil {
		owner.superseded = true
		if owner.closed {
			delete(h.byClient, owner.cl)
		}
		c.prev = owner // guarded by presenceMu, but c is not shared yet
	}
	h.byClient[cl] = c
	h.byID[cl.ID] = c
	return packets.CodeSuccess
}

// OnConnectAuthenticate admits only clients OnConnect claimed.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	_, ok := h.lookup(cl)
	return ok
}

// lookup returns the identity of an authenticated, unrevoked client.
func (h *hook) lookup(cl *mqtt.Client) (tenants.Identity, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	c := h.byClient[cl]
	if c == nil || c.revoked {
		return tenants.Identity{}, false
	}
	return c.id, true
}

// OnACLCheck lets a device publish only to its own telemetry, events, state
// and command replies, and subscribe to (and be delivered) only its own
// commands. mochi calls it with write=false both for a SUBSCRIBE filter
// (a refusal becomes SUBACK 0x87, or 0x80 on 3.1.1) and for each delivery
// (server.go publishToClient), with the topic name.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	id, ok := h.lookup(cl)
	if ok {
		if write {
			ok = mayPublish(id.TenantSlug, id.DeviceKey, topic)
		} else {
			ok = maySubscribe(id.TenantSlug, id.DeviceKey, topic)
		}
	}
	if !ok {
		h.aclDenied.Add(1)
	}
	return ok
}

// OnPublish hands a device publish (already ACL-checked) to the Sink. mochi
// calls it before acknowledging (server.go processPublish); only
// ErrRejectPacket withholds the PUBACK/PUBREC, so a refused QoS≥1 message
// also costs the client its connection and the device sends it again. An
// accepted message is marked Ignore: it is neither retained nor fanned out,
// since no device may subscribe to it and ingest already has it.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil // Broker.Publish
	}
	qos := pk.FixedHeader.Qos
	id, ok := h.lookup(cl)
	t, err := ParseTopic(pk.TopicName)
	if !ok || err != nil || t.Tenant != id.TenantSlug || t.Device != id.DeviceKey || t.Kind == KindCmd {
		// Unreachable past the ACL unless the device was revoked meanwhile.
		h.aclDenied.Add(1)
		if qos > 0 {
			h.b.kick(cl, packets.ErrNotAuthorized)
		}
		return pk, packets.ErrRejectPacket
	}
	if adm := h.b.cfg.Admission; adm != nil && t.Kind == KindTelemetry {
		if err := adm.AdmitPublish(h.b.sinkCtx, id.TenantID, 1); apps.Code(err) == apps.QuotaExceeded {
			// Not accepted: no PUBACK; the client is told why (MQTT 5
			// DISCONNECT 0x97) and refused again at CONNECT while over quota.
			h.quotaRefused.Add(1)
			h.rejected.Add(1)
			if qos == 0 {
				h.dropped.Add(1)
				return pk, packets.ErrRejectPacket
			}
			h.b.kick(cl, packets.ErrQuotaExceeded)
			return pk, packets.ErrRejectPacket
		}
	}
	m := Message{Identity: id, Topic: t, Payload: pk.Payload, QoS: qos, Received: time.Now()}
	if err := h.sink.Handle(h.b.sinkCtx, m); err != nil {
		h.rejected.Add(1)
		if qos == 0 {
			h.dropped.Add(1)
			return pk, packets.ErrRejectPacket
		}
		h.b.log.Debug("broker: publish not accepted, disconnecting", "client", cl.ID, "topic", pk.TopicName, "error", err)
		h.b.kick(cl, packets.ErrServerBusy)
		return pk, packets.ErrRejectPacket
	}
	h.received.Add(1)
	pk.Ignore = true
	return pk, nil
}

// OnWill keeps wills from being retained in the broker (nobody could read
// them) and drops any the connect-time check would have refused.
func (h *hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	id, ok := h.lookup(cl)
	if !ok || !mayPublish(id.TenantSlug, id.DeviceKey, will.TopicName) {
		return mqtt.Will{}, nil // an empty topic reaches no subscriber
	}
	will.Retain = false
	return will, nil
}

// OnWillSent hands a will, once mochi issues it, to the Sink like a publish.
// A delayed will of a session that has already expired never gets here.
func (h *hook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	id, ok := h.lookup(cl)
	if !ok {
		return
	}
	t, err := ParseTopic(pk.TopicName)
	if err != nil || t.Tenant != id.TenantSlug || t.Device != id.DeviceKey || t.Kind == KindCmd {
		return
	}
	// The payload is still referenced by the client's Will; the Sink owns its copy.
	payload := append([]byte(nil), pk.Payload...)
	m := Message{Identity: id, Topic: t, Payload: payload, QoS: pk.FixedHeader.Qos, Received: time.Now()}
	if err := h.sink.Handle(h.b.sinkCtx, m); err != nil {
		h.rejected.Add(1)
		return
	}
	h.received.Add(1)
}

// OnSessionEstablished reports the connection to Presence, after reporting
// the end of the connection it took over, if that has not happened yet.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	h.mu.RLock()
	c := h.byClient[cl]
	h.mu.RUnlock()
	if c == nil {
		return
	}
	h.presenceMu.Lock()
	defer h.presenceMu.Unlock()
	if p := c.prev; p != nil {
		c.prev = nil
		if p.online {
			p.online = false
			if h.presence != nil {
				h.presence.Disconnected(p.id)
			}
		}
	}
	c.online = true
	if h.presence != nil {
		h.presence.Connected(c.id, c.remote)
	}
}

// OnDisconnect reports the end of a connection and forgets clients whose
// session ended with it. A persisted session stays claimed, so no other
// device can take its client id until it expires.
func (h *hook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	h.mu.Lock()
	c := h.byClient[cl]
	if c != nil {
		c.closed = true
		if expire || c.superseded {
			h.forget(c)
		}
	}
	h.mu.Unlock()
	if c == nil {
		return
	}
	h.presenceMu.Lock()
	defer h.presenceMu.Unlock()
	if c.online {
		c.online = false
		if h.presence != nil {
			h.presence.Disconnected(c.id)
		}
	}
}

// restore re-attaches the sessions mochi restored from the session store to
// their devices, so commands published while they are offline are queued
// for them (the delivery ACL needs the identity) and no other device can take
// their client ids. A session whose device is gone or disabled stays
// detached: nothing is delivered to it and it expires.
func (h *hook) restore(ctx context.Context) {
	restored, skipped := 0, 0
	for id, cl := range h.b.server.Clients.GetAll() {
		if cl.Net.Inline {
			continue
		}
		h.mu.RLock()
		_, known := h.byClient[cl]
		h.mu.RUnlock()
		if known {
			continue
		}
		username := string(cl.Properties.Username)
		key, slug, ok := splitUsername(username)
		if !ok {
			skipped++
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ident, err := h.devices.Lookup(lctx, username)
		cancel()
		if err != nil || !ident.Active || ident.DeviceKey != key || ident.TenantSlug != slug {
			skipped++
			continue
		}
		h.mu.Lock()
		if h.byID[id] == nil {
			c := &conn{cl: cl, id: ident, closed: true}
			h.byClient[cl] = c
			h.byID[id] = c
			restored++
		}
		h.mu.Unlock()
	}
	if restored+skipped > 0 {
		h.b.log.Info("broker: persistent sessions restored", "sessions", restored, "detached", skipped)
	}
}

// OnClientExpired forgets a persisted session mochi has expired.
func (h *hook) OnClientExpired(cl *mqtt.Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c := h.byClient[cl]; c != nil {
		h.forget(c)
	}
}

// forget drops c; h.mu must be held.
func (h *hook) forget(c *conn) {
	delete(h.byClient, c.cl)
	if h.byID[c.cl.ID] == c {
		delete(h.byID, c.cl.ID)
	}
}

// online returns the connections currently reported as connected.
func (h *hook) online() []*conn {
	h.mu.RLock()
	all := make([]*conn, 0, len(h.byClient))
	for _, c := range h.byClient {
		all = append(all, c)
	}
	h.mu.RUnlock()
	h.presenceMu.Lock()
	defer h.presenceMu.Unlock()
	out := all[:0]
	for _, c := range all {
		if c.online && !c.cl.Closed() {
			out = append(out, c)
		}
	}
	return out
}

// revoke marks c's device as disabled, so the ACL refuses it from now on; it
// reports whether c was not revoked already.
func (h *hook) revoke(c *conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.revoked {
		return false
	}
	c.revoked = true
	h.revoked.Add(1)
	return true
}
