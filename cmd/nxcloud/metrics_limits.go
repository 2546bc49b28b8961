package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nxcloud/nxcloud/broker"
)

// limitCollectors exposes what the broker's limits against hostile clients
// refused, dropped or slowed (docs/mqtt.md "Limits"), one counter per reason.
func limitCollectors(b *broker.Broker) []prometheus.Collector {
	counter := func(name, help string, f func(broker.LimitStats) float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return f(b.LimitStats()) })
	}
	return []prometheus.Collector{
		counter("nxcloud_mqtt_publishes_throttled_total", "QoS 1 publishes held until their device's publish rate allowed them.",
			func(s broker.LimitStats) float64 { return float64(s.Throttled) }),
		counter("nxcloud_mqtt_publishes_throttled_seconds_total", "Time QoS 1 publishes were held by their device's publish rate.",
			func(s broker.LimitStats) float64 { return s.ThrottledFor.Seconds() }),
		counter("nxcloud_mqtt_rate_disconnects_total", "Clients disconnected because a publish was over their device's rate for longer than the throttle bound.",
			func(s broker.LimitStats) float64 { return float64(s.RateDisconnects) }),
		counter("nxcloud_mqtt_publishes_rate_dropped_total", "QoS 0 publishes dropped over their device's rate.",
			func(s broker.LimitStats) float64 { return float64(s.RateDropped) }),
		counter("nxcloud_mqtt_connects_rate_refused_total", "Connections refused over their source address's connect rate.",
			func(s broker.LimitStats) float64 { return float64(s.ConnectsRefused) }),
		counter("nxcloud_mqtt_slow_readers_closed_total", "Connections closed because a write to them timed out.",
			func(s broker.LimitStats) float64 { return float64(s.SlowReaders) }),
		counter("nxcloud_mqtt_packets_too_large_total", "Connections closed for a packet over the maximum packet size.",
			func(s broker.LimitStats) float64 { return float64(s.TooLarge) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "nxcloud_mqtt_connect_rate_addresses", Help: "Source addresses tracked by the connect rate limit."},
			func() float64 { return float64(b.LimitStats().Addresses) }),
	}
}
