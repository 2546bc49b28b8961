package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/metering"
	"github.com/nxcloud/nxcloud/tenants"
)

// TestMQTTHardQuota: a tenant on a plan with a hard quota of telemetry
// points has its publishes refused (no PUBACK, the client disconnected) once
// the quota is used, and its devices' new connections refused (CONNACK 3 on
// MQTT 3.1.1, which has no quota code), while another tenant publishes on.
func TestMQTTHardQuota(t *testing.T) {
	p := startTestPlatform(t)
	ctx := context.Background()
	slug := "quota-" + uuid.NewString()[:8]
	tn, _, err := p.tenants.CreateEnterprise(ctx, tenants.EnterpriseInput{Slug: slug, Name: "Quota test", Sector: "magnetic-materials"})
	if err != nil {
		t.Fatal(err)
	}
	const secret = "quota-device-secret"
	if _, _, err := p.tenants.RegisterDevice(ctx, tn.ID, tenants.DeviceInput{Key: "mill-1", Model: "jet-mill", Secret: secret}); err != nil {
		t.Fatal(err)
	}
	plan, err := p.meter.CreatePlan(ctx, metering.PlanInput{Code: slug, Name: "Tiny", Currency: "EUR", Definition: metering.Definition{
		Quotas: []metering.Quota{{Meter: metering.MeterPoints, Limit: 5, Hard: true}}}}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.meter.Subscribe(ctx, p.sys, tn.ID, metering.SubscriptionInput{Plan: plan.Code}, "test"); err != nil {
		t.Fatal(err)
	}
	user := tenants.MQTTUsername("mill-1", slug)
	c, err := connect(t, p, user, secret)
	if err != nil {
		t.Fatal(err)
	}
	topic := "v1/" + slug + "/mill-1/telemetry"
	acked := 0
	base := time.Now().Add(-time.Minute)
	for i := 0; i < 20; i++ {
		tok := c.Publish(topic, 1, false, fmt.Sprintf(`{"ts":%d,"metrics":{"d50_um":3.5}}`, base.Add(time.Duration(i)*time.Second).UnixMilli()))
		if !tok.WaitTimeout(3*time.Second) || tok.Error() != nil {
			break
		}
		acked++
	}
	if acked != 5 {
		t.Fatalf("%d publishes acknowledged on a hard quota of 5 points, want 5", acked)
	}
	eventually(t, "the over-quota client to be disconnected", func() string {
		if c.IsConnectionOpen() {
			return "still connected"
		}
		return ""
	})
	_, err = connect(t, p, user, secret)
	if err == nil || !strings.Contains(err.Error(), "Unavailable") { // paho: "server Unavailable"
		t.Fatalf("a device of a tenant over its hard quota connected again: %v", err)
	}
	if p.broker.Stats().QuotaRefused < 2 {
		t.Errorf("quota refusals counted %d, want the publish and the connection", p.broker.Stats().QuotaRefused)
	}
}
