package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nxcloud/nxcloud/broker"
)

// brokerCollectors exposes the broker's counters to Prometheus.
func brokerCollectors(b *broker.Broker) []prometheus.Collector {
	counter := func(name, help string, f func(broker.Stats) int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(f(b.Stats())) })
	}
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "nxcloud_mqtt_clients_connected", Help: "Authenticated MQTT connections."},
			func() float64 { return float64(b.Stats().ClientsConnected) }),
		counter("nxcloud_mqtt_publishes_received_total", "Device publishes accepted by ingest.", func(s broker.Stats) int64 { return s.Received }),
		counter("nxcloud_mqtt_publishes_rejected_total", "Device publishes refused by ingest (overload, shutdown).", func(s broker.Stats) int64 { return s.Rejected }),
		counter("nxcloud_mqtt_publishes_dropped_total", "QoS 0 publishes dropped under overload.", func(s broker.Stats) int64 { return s.Dropped }),
		counter("nxcloud_mqtt_acl_denied_total", "Publishes, subscriptions and deliveries refused by the ACL.", func(s broker.Stats) int64 { return s.ACLDenied }),
		counter("nxcloud_mqtt_auth_refused_total", "Refused MQTT connects.", func(s broker.Stats) int64 { return s.AuthRefused }),
		counter("nxcloud_mqtt_clients_revoked_total", "Clients cut off because their device was disabled.", func(s broker.Stats) int64 { return s.Revoked }),
		counter("nxcloud_mqtt_quota_refused_total", "Connections and publishes refused over a tenant's hard quota.", func(s broker.Stats) int64 { return s.QuotaRefused }),
	}
}
