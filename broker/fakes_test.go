package broker

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// ---- test doubles -------------------------------------------------------

type fakeDevice struct {
	secret string
	id     tenants.Identity
}

// fakeDevices is an in-memory device registry keyed by MQTT username.
type fakeDevices struct {
	mu   sync.Mutex
	byUN map[string]*fakeDevice
}

func newFakeDevices() *fakeDevices { return &fakeDevices{byUN: map[string]*fakeDevice{}} }

func (f *fakeDevices) add(key, slug, secret string) tenants.Identity {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := tenants.Identity{
		TenantID: uuid.NewSHA1(uuid.NameSpaceOID, []byte(slug)), TenantSlug: slug,
		DeviceID: uuid.New(), DeviceKey: key, ModelID: uuid.New(), Active: true,
	}
	f.byUN[key+"@"+slug] = &fakeDevice{secret: secret, id: id}
	return id
}

// setIdentity makes a username resolve to an arbitrary identity.
func (f *fakeDevices) setIdentity(username, secret string, id tenants.Identity) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.byUN[username] = &fakeDevice{secret: secret, id: id}
}

func (f *fakeDevices) disable(key, slug string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.byUN[key+"@"+slug].id.Active = false
}

func (f *fakeDevices) Authenticate(_ context.Context, username string, password []byte) (tenants.Identity, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if username == "broken@acme" {
		return tenants.Identity{}, errors.New("registry: connection refused")
	}
	d, ok := f.byUN[username]
	if !ok || d.secret != string(password) {
		return tenants.Identity{}, apps.Errorf(apps.Unauthorized, "bad username or password")
	}
	if !d.id.Active {
		return d.id, apps.Errorf(apps.Forbidden, "device is disabled")
	}
	return d.id, nil
}

func (f *fakeDevices) Lookup(_ context.Context, username string) (tenants.Identity, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.byUN[username]
	if !ok {
		return tenants.Identity{}, apps.Errorf(apps.NotFound, "no device %s", username)
	}
	return d.id, nil
}

func (f *fakeDevices) Identities(ctx context.Context, ids []uuid.UUID) (map[uuid.UUID]tenants.Identity, error) {
	out := map[uuid.UUID]tenants.Identity{}
	for _, id := range ids {
		got, err := f.Identity(ctx, id)
		if err != nil {
			if apps.Code(err) == apps.NotFound {
				continue
			}
			return nil, err
		}
		out[id] = got
	}
	return out, nil
}

func (f *fakeDevices) Identity(_ context.Context, id uuid.UUID) (tenants.Identity, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, d := range f.byUN {
		if d.id.DeviceID == id {
			return d.id, nil
		}
	}
	return tenants.Identity{}, apps.Errorf(apps.NotFound, "device not found")
}

// recordingSink records accepted messages; fail, if set, refuses some.
type recordingSink struct {
	mu       sync.Mutex
	msgs     []Message
	attempts int
	fail     func(Message) error
	ch       chan Message
}

func newSink() *recordingSink { return &recordingSink{ch: make(chan Message, 1000)} }

func (s *recordingSink) Handle(_ context.Context, m Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attempts++
	if s.fail != nil {
		if err := s.fail(m); err != nil {
			return err
		}
	}
	s.msgs = append(s.msgs, m)
	s.ch <- m
	return nil
}

func (s *recordingSink) setFail(fn func(Message) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = fn
}

func (s *recordingSink) messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// next waits for the next accepted message.
func (s *recordingSink) next(t *testing.T) Message {
	t.Helper()
	select {
	case m := <-s.ch:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message reached the sink")
		return Message{}
	}
}

type presenceEvent struct {
	connected bool
	device    string
}

type fakePresence struct {
	mu     sync.Mutex
	events []presenceEvent
}

func (p *fakePresence) Connected(id tenants.Identity, _ string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, presenceEvent{true, id.DeviceKey + "@" + id.TenantSlug})
}

func (p *fakePresence) Disconnected(id tenants.Identity) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, presenceEvent{false, id.DeviceKey + "@" + id.TenantSlug})
}

func (p *fakePresence) snapshot() []presenceEvent {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]presenceEvent(nil), p.events...)
}
