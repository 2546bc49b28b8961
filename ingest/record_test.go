package ingest

import (
	"bytes"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/broker"
	"github.com/nxcloud/nxcloud/tenants"
)

func sampleMessage() broker.Message {
	return broker.Message{
		Identity: tenants.Identity{TenantID: uuid.New(), TenantSlug: "acme", DeviceID: uuid.New(), DeviceKey: "press-1", ModelID: uuid.New(), Active: true},
		Topic:    broker.Topic{Tenant: "acme", Device: "press-1", Kind: broker.KindCmdReply, Name: "recipe"},
		Payload:  []byte(`{"status":"applied"}`), QoS: 1, Received: time.Unix(0, 1795475955111222333),
	}
}

// FuzzDecodeRecord: any bytes (a corrupt spool record that passed its
// checksum by chance) decode to an error or a message, never a panic; a
// decoded message encodes back to the same bytes.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(sampleMessage()))
	m := sampleMessage()
	m.Topic = broker.Topic{Tenant: "acme", Device: "press-1", Kind: broker.KindTelemetry}
	m.Payload = []byte(`{"metrics":{"x":1}}`)
	f.Add(encodeRecord(m))
	f.Add([]byte{recordVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeRecord(b)
		if err != nil {
			return
		}
		if again := encodeRecord(m); !bytes.Equal(again, b) {
			t.Fatalf("round trip changed the record:\n%x\n%x", b, again)
		}
	})
}

func TestRecordRoundTrip(t *testing.T) {
	m := sampleMessage()
	got, err := decodeRecord(encodeRecord(m))
	if err != nil {
		t.Fatal(err)
	}
	if got.Identity != m.Identity || got.Topic != m.Topic || !bytes.Equal(got.Payload, m.Payload) || got.QoS != m.QoS || !got.Received.Equal(m.Received) {
		t.Fatalf("round trip: %+v, want %+v", got, m)
	}
}
