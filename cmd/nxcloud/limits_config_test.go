package main

import (
	"testing"
	"time"

	"github.com/nxcloud/nxcloud/broker"
)

func TestBrokerLimitsFromEnvironmentAndFlags(t *testing.T) {
	var c config
	fs := newFlagSet()
	err := bindConfig(fs, &c, env(map[string]string{
		"NXCLOUD_MQTT_DEVICE_RATE": "50", "NXCLOUD_MQTT_CONNECT_RATE": "-1", "NXCLOUD_MQTT_WRITE_TIMEOUT": "5s",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse([]string{"--mqtt-device-bytes", "1024", "--mqtt-throttle-max", "2s"}); err != nil {
		t.Fatal(err)
	}
	want := broker.Limits{
		PublishRate: 50, PublishBurst: 1000, ByteRate: 1024, ByteBurst: 8 << 20, MaxThrottle: 2 * time.Second,
		ConnectRate: -1, ConnectBurst: 1000, WriteTimeout: 5 * time.Second,
	}
	if got := c.brokerLimits(); got != want {
		t.Fatalf("limits %+v, want %+v", got, want)
	}
	if err := bindConfig(newFlagSet(), &c, env(map[string]string{"NXCLOUD_MQTT_CONNECT_RATE": "fast"})); err == nil {
		t.Fatal("a rate that is not a number was accepted")
	}
}
