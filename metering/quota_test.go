package metering

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

func testPlan(t *testing.T, s *Service, d Definition) Plan {
	t.Helper()
	p, err := s.CreatePlan(context.Background(), PlanInput{Code: "t-" + uuid.NewString()[:13], Name: "Test plan", Currency: "EUR", Definition: d}, "test")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func subscribe(t *testing.T, s *Service, tn uuid.UUID, plan Plan, baseline *string) {
	t.Helper()
	if _, err := s.Subscribe(context.Background(), s.sys, tn, SubscriptionInput{Plan: plan.Code, EffectBaseline: baseline}, "test"); err != nil {
		t.Fatal(err)
	}
}

func alertLevels(t *testing.T, s *Service, tn tenanttest.Tenant, meter string) []int {
	t.Helper()
	as, err := s.Alerts(context.Background(), s.sys, tn.ID)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, a := range as {
		if a.Meter == meter {
			out = append([]int{a.Level}, out...)
		}
	}
	return out
}

// A hard API quota refuses the call past the limit with how long to wait,
// warns at 80 % and 100 %, and survives the loss of Redis: the counter is
// rebuilt from the ledger.
func TestHardQuota(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	s := newService(t, env)
	tn := env.NewTenant(t)
	subscribe(t, s, tn.ID, testPlan(t, s, Definition{Quotas: []Quota{{Meter: MeterAPICalls, Limit: 5, Hard: true}}}), nil)
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		if _, err := s.AdmitAPI(ctx, tn.ID); err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
		// What the middleware does once the call is answered.
		if err := s.RecordAPICall(ctx, tn.ID, "telemetry:read", uuid.NewString()); err != nil {
			t.Fatal(err)
		}
	}
	wait, err := s.AdmitAPI(ctx, tn.ID)
	if apps.Code(err) != apps.QuotaExceeded || wait <= 0 || wait > 32*24*time.Hour {
		t.Fatalf("6th call: %v (retry after %s), want quota_exceeded with a wait until the month's end", err, wait)
	}
	if !strings.Contains(err.Error(), "allows 5") {
		t.Errorf("message %q does not say the limit", err)
	}
	if got := alertLevels(t, s, tn, MeterAPICalls); len(got) != 2 || got[0] != 80 || got[1] != 100 {
		t.Errorf("warnings = %v, want [80 100]", got)
	}
	// Redis loses the counter: it is rebuilt from the ledger (5 calls), not
	// restarted from zero.
	period := monthStart(time.Now())
	if err := env.Redis.Del(ctx, hotKey(tn.ID, MeterAPICalls, period)).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AdmitAPI(ctx, tn.ID); apps.Code(err) != apps.QuotaExceeded {
		t.Errorf("after Redis lost the counter: %v, want quota_exceeded", err)
	}
	if v, _ := env.Redis.Get(ctx, hotKey(tn.ID, MeterAPICalls, period)).Int64(); v != 5 {
		t.Errorf("rebuilt counter = %d, want 5", v)
	}
	// Reconcile resets to the ledger.
	if err := env.Redis.Set(ctx, hotKey(tn.ID, MeterAPICalls, period), 0, time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := env.Redis.Get(ctx, hotKey(tn.ID, MeterAPICalls, period)).Int64(); v != 5 {
		t.Errorf("reconciled counter = %d, want 5", v)
	}
	states, err := s.QuotaStates(ctx, tn.ID)
	if err != nil || len(states) != 1 || states[0].Used != 5 {
		t.Errorf("quota states = %+v, %v", states, err)
	}
}

// MQTT quotas: publishes are refused past a hard points quota, and so are
// new connections once it is used up; a soft quota only warns.
func TestPublishQuota(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	s := newService(t, env)
	hard, soft := env.NewTenant(t), env.NewTenant(t)
	subscribe(t, s, hard.ID, testPlan(t, s, Definition{Quotas: []Quota{{Meter: MeterPoints, Limit: 100, Hard: true}}}), nil)
	subscribe(t, s, soft.ID, testPlan(t, s, Definition{Quotas: []Quota{{Meter: MeterPoints, Limit: 100}}}), nil)
	ctx := context.Background()
	if err := s.AdmitConnect(ctx, hard.ID); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if err := s.AdmitPublish(ctx, hard.ID, 10); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		if err := s.AdmitPublish(ctx, soft.ID, 15); err != nil {
			t.Fatalf("soft publish %d: %v", i, err)
		}
	}
	if err := s.AdmitPublish(ctx, hard.ID, 1); apps.Code(err) != apps.QuotaExceeded {
		t.Errorf("publish past the hard quota: %v", err)
	}
	if err := s.AdmitConnect(ctx, hard.ID); apps.Code(err) != apps.QuotaExceeded || !strings.Contains(err.Error(), "connections are refused") {
		t.Errorf("connect with the quota used up: %v", err)
	}
	if got := alertLevels(t, s, soft, MeterPoints); len(got) != 2 {
		t.Errorf("soft quota warnings = %v, want [80 100]", got)
	}
	// A tenant without a plan has no quota: no Redis round trip at all.
	free := env.NewTenant(t)
	if err := s.AdmitPublish(ctx, free.ID, 1000000); err != nil {
		t.Error(err)
	}
}

// Without Redis, quota checks fail open (counted) and never block.
func TestQuotaFailsOpen(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer dead.Close()
	s := New(Config{}, env.DB.System, env.DB.App, dead)
	tn := env.NewTenant(t)
	subscribe(t, s, tn.ID, testPlan(t, s, Definition{Quotas: []Quota{{Meter: MeterPoints, Limit: 1, Hard: true}}}), nil)
	for i := 0; i < 3; i++ {
		if err := s.AdmitPublish(context.Background(), tn.ID, 10); err != nil {
			t.Fatalf("publish without Redis: %v, want admitted", err)
		}
	}
	var m dto.Metric
	if err := s.met.failOpen.WithLabelValues(MeterPoints).Write(&m); err != nil {
		t.Fatal(err)
	}
	if n := m.GetCounter().GetValue(); n != 3 {
		t.Errorf("fail-open count = %v, want 3", n)
	}
}
