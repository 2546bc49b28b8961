package ingest

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/broker"
	"github.com/nxcloud/nxcloud/tenants"
)

// recordVersion is the version of the spool record body.
const recordVersion = 1

// encodeRecord is the spool record of an accepted publish: everything the
// writers need to store it as it would have been stored on arrival (the
// arrival time included, so a replay produces identical rows).
//
// version u8 | received unix nanos i64 | tenant, device, model 16 bytes each |
// qos u8 | tenant slug, device key, topic: u16 length + bytes | payload: u32
// length + bytes.
func encodeRecord(m broker.Message) []byte {
	topic := m.Topic.String()
	id := m.Identity
	n := 1 + 8 + 48 + 1 + 2 + len(id.TenantSlug) + 2 + len(id.DeviceKey) + 2 + len(topic) + 4 + len(m.Payload)
	b := make([]byte, 0, n)
	b = append(b, recordVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Received.UnixNano()))
	b = append(b, id.TenantID[:]...)
	b = append(b, id.DeviceID[:]...)
	b = append(b, id.ModelID[:]...)
	b = append(b, m.QoS)
	for _, s := range []string{id.TenantSlug, id.DeviceKey, topic} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Payload)))
	return append(b, m.Payload...)
}

var errBadRecord = errors.New("ingest: malformed spool record")

// decodeRecord is the inverse of encodeRecord. The payload aliases b.
func decodeRecord(b []byte) (broker.Message, error) {
	var m broker.Message
	if len(b) < 1+8+48+1 || b[0] != recordVersion {
		return m, errBadRecord
	}
	m.Received = time.Unix(0, int64(binary.BigEndian.Uint64(b[1:9])))
	var id tenants.Identity
	id.TenantID = uuid.UUID(b[9:25])
	id.DeviceID = uuid.UUID(b[25:41])
	id.ModelID = uuid.UUID(b[41:57])
	id.Active = true
	m.QoS = b[57]
	rest := b[58:]
	var strs [3]string
	for i := range strs {
		if len(rest) < 2 {
			return m, errBadRecord
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+n {
			return m, errBadRecord
		}
		strs[i] = string(rest[2 : 2+n])
		rest = rest[2+n:]
	}
	id.TenantSlug, id.DeviceKey = strs[0], strs[1]
	if len(rest) < 4 || int(binary.BigEndian.Uint32(rest)) != len(rest)-4 {
		return m, errBadRecord
	}
	m.Payload = rest[4:]
	t, err := broker.ParseTopic(strs[2])
	if err != nil {
		return m, errBadRecord
	}
	m.Topic, m.Identity = t, id
	return m, nil
}
