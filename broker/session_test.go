package broker

import (
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// TestPersistentSessionAcrossRestart: a device with a persistent session
// (clean session false) subscribed to its commands, went offline, and a QoS 1
// command was published for it; the broker restarts on the same session
// store; the device reconnects and receives the command. Another device can
// still not take its client id, and a command for another device is not
// delivered to it.
func TestPersistentSessionAcrossRestart(t *testing.T) {
	store := filepath.Join(t.TempDir(), "sessions.db")
	withStore := func(c *Config) { c.SessionStore = store; c.WSAddr = "" }
	persistent := func(o *paho.ClientOptions) { o.SetCleanSession(false) }

	e1 := start(t, withStore)
	c, err := e1.dial(t, "press-1-session", acme1, secrets[acme1], persistent)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := c.subscribe(t, "v1/acme/press-1/cmd/#"); code != 1 {
		t.Fatalf("SUBACK %d, want 1", code)
	}
	c.Disconnect(50)
	eventually(t, "the device to go offline", func() bool { return e1.b.Stats().ClientsConnected == 0 })

	// Queued while offline: delivered after the restart.
	if err := e1.b.Publish("v1/acme/press-1/cmd/recipe", []byte(`{"download":"d-1"}`), false, 1); err != nil {
		t.Fatal(err)
	}
	if err := e1.b.Publish("v1/acme/press-2/cmd/recipe", []byte(`{"download":"not-yours"}`), false, 1); err != nil {
		t.Fatal(err)
	}
	if err := e1.b.Close(); err != nil {
		t.Fatal(err)
	}

	e2 := start(t, withStore)
	// The restored session is still its device's: another device cannot take
	// the client id.
	if _, err := e2.dial(t, "press-1-session", acme2, secrets[acme2], persistent); err == nil {
		t.Fatal("another device took over a restored persistent session")
	}
	got := make(chan paho.Message, 10)
	_, err = e2.dial(t, "press-1-session", acme1, secrets[acme1], persistent, func(o *paho.ClientOptions) {
		o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { got <- m })
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m.Topic() != "v1/acme/press-1/cmd/recipe" || string(m.Payload()) != `{"download":"d-1"}` {
			t.Fatalf("delivered %s %s", m.Topic(), m.Payload())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the command queued before the restart was not delivered on reconnect")
	}
	select {
	case m := <-got:
		t.Fatalf("unexpected delivery %s %s", m.Topic(), m.Payload())
	case <-time.After(300 * time.Millisecond):
	}
}

// TestOfflineCommandDeliveredOnReconnect: without a restart, a QoS 1
// command published while a persistent-session device is offline reaches it
// when it reconnects.
func TestOfflineCommandDeliveredOnReconnect(t *testing.T) {
	e := start(t, nil)
	persistent := func(o *paho.ClientOptions) { o.SetCleanSession(false) }
	c, err := e.dial(t, "p1", acme1, secrets[acme1], persistent)
	if err != nil {
		t.Fatal(err)
	}
	c.subscribe(t, "v1/acme/press-1/cmd/+")
	c.Disconnect(50)
	eventually(t, "the device to go offline", func() bool { return e.b.Stats().ClientsConnected == 0 })
	if err := e.b.Publish("v1/acme/press-1/cmd/recipe", []byte(`{"download":"d-2"}`), false, 1); err != nil {
		t.Fatal(err)
	}
	got := make(chan paho.Message, 10)
	if _, err := e.dial(t, "p1", acme1, secrets[acme1], persistent, func(o *paho.ClientOptions) {
		o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { got <- m })
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if string(m.Payload()) != `{"download":"d-2"}` {
			t.Fatalf("delivered %s", m.Payload())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the command published while offline was not delivered on reconnect")
	}
}
