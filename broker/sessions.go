package broker

import (
	"strconv"
	"strings"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
)

// sessionStore is mochi's bbolt storage hook with one fix: in v2.7.9 it
// stores an inflight message without its packet id (bolt.go OnQosPublish
// leaves storage.Message.PacketID zero, unlike the badger and pebble hooks),
// so a restored QoS 1 command is refused by mochi on resend ("missing packet
// id") and never reaches the device. The id is the suffix of the message's
// storage key ("if_<client>:<packet id>", bolt.go inflightKey): restore it
// from there when the store is read.
type sessionStore struct {
	*bolt.Hook
}

// StoredInflightMessages implements mqtt.Hook.
func (s sessionStore) StoredInflightMessages() ([]storage.Message, error) {
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
