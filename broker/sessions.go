package broker

import (
	"strconv"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/packets"
)

// sessionStore is mochi's bbolt storage hook, narrowed to what persistent
// sessions need and fixed where v2.7.9 falls short:
//
//   - The stock hook writes (one fsynced bbolt transaction each) for every
//     client, every subscription and every QoS 1 packet, inbound ones
//     included: OnQosPublish/OnQosComplete run for the PUBACK of each device
//     publish (server.go processPublish). Measured, that serialises ingest on
//     fsync and collapses it. Here only sessions that outlive their
//     connection (MQTT 3.1.1 clean session false; MQTT 5 session expiry > 0)
//     are stored, and of their QoS packets only deliveries to the device
//     (commands): a device's telemetry never touches the store.
//   - It stores an inflight message without its packet id (bolt.go
//     OnQosPublish leaves storage.Message.PacketID zero, unlike the badger and
//     pebble hooks), so a restored command was refused on resend ("missing
//     packet id"). The id is the suffix of the storage key
//     ("if_<client>:<packet id>", bolt.go inflightKey): restored from there.
type sessionStore struct {
	*bolt.Hook

	mu     sync.Mutex
	stored map[string]bool // client ids with a record in the store
}

func newSessionStore() *sessionStore {
	return &sessionStore{Hook: new(bolt.Hook), stored: map[string]bool{}}
}

// persistent reports whether cl's session outlives its connection.
func persistent(cl *mqtt.Client) bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

func (s *sessionStore) isStored(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stored[id]
}

func (s *sessionStore) setStored(id string, v bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v {
		s.stored[id] = true
	} else {
		delete(s.stored, id)
	}
}

// OnSessionEstablished stores a persistent session; a clean one replaces a
// persistent session stored under the same client id.
func (s *sessionStore) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if persistent(cl) {
		s.Hook.OnSessionEstablished(cl, pk)
		s.setStored(cl.ID, true)
		return
	}
	if s.isStored(cl.ID) {
		s.Hook.OnClientExpired(cl)
		s.setStored(cl.ID, false)
	}
}

// OnWillSent updates a stored session.
func (s *sessionStore) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	if s.isStored(cl.ID) {
		s.Hook.OnWillSent(cl, pk)
	}
}

// OnDisconnect removes a stored session that ends with its connection.
func (s *sessionStore) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if s.isStored(cl.ID) && expire && cl.StopCause() != packets.ErrSessionTakenOver {
		s.Hook.OnDisconnect(cl, err, expire)
		s.setStored(cl.ID, false)
	}
}

// OnClientExpired removes an expired session.
func (s *sessionStore) OnClientExpired(cl *mqtt.Client) {
	if s.isStored(cl.ID) {
		s.Hook.OnClientExpired(cl)
		s.setStored(cl.ID, false)
	}
}

// OnSubscribed stores a persistent session's subscriptions.
func (s *sessionStore) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if persistent(cl) {
		s.Hook.OnSubscribed(cl, pk, codes)
	}
}

// OnUnsubscribed removes them.
func (s *sessionStore) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if s.isStored(cl.ID) {
		s.Hook.OnUnsubscribed(cl, pk)
	}
}

// OnQosPublish stores a QoS delivery to a persistent session (a command);
// the acknowledgement of a device's own publish is never stored.
func (s *sessionStore) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if pk.FixedHeader.Type == packets.Publish && persistent(cl) {
		s.Hook.OnQosPublish(cl, pk, sent, resends)
	}
}

// OnQosComplete removes a delivered command. The PUBACK of a device's own
// QoS 1 publish also arrives here (server.go processPublish); for a
// persistent session it removes nothing, or — when the device's packet id
// equals that of a command in flight to it — that command's record early,
// which only matters if nxcloud also stops before the command is delivered.
func (s *sessionStore) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if s.isStored(cl.ID) {
		s.Hook.OnQosComplete(cl, pk)
	}
}

// OnQosDropped removes a dropped command.
func (s *sessionStore) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if s.isStored(cl.ID) {
		s.Hook.OnQosDropped(cl, pk)
	}
}

// StoredClients implements mqtt.Hook and remembers which sessions are stored.
func (s *sessionStore) StoredClients() ([]storage.Client, error) {
	v, err := s.Hook.StoredClients()
	for _, c := range v {
		s.setStored(c.ID, true)
	}
	return v, err
}

// StoredInflightMessages implements mqtt.Hook, with packet ids restored.
func (s *sessionStore) StoredInflightMessages() ([]storage.Message, error) {
	msgs, err := s.Hook.StoredInflightMessages()
	for i := range msgs {
		if msgs[i].PacketID != 0 {
			continue
		}
		if j := strings.LastIndexByte(msgs[i].ID, ':'); j >= 0 {
			if id, perr := strconv.ParseUint(msgs[i].ID[j+1:], 10, 16); perr == nil {
				msgs[i].PacketID = uint16(id)
			}
		}
	}
	return msgs, err
}
