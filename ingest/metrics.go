package ingest

import "github.com/prometheus/client_golang/prometheus"

var (
	metricPointsCommitted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nxcloud_ingest_points_committed_total", Help: "Telemetry points committed to the database."})
	metricRejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nxcloud_ingest_rejections_total", Help: "Rejected payload parts, by reason (see docs/mqtt.md)."}, []string{"reason"})
	metricWriteErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nxcloud_ingest_write_errors_total", Help: "Failed batch writes (each is retried)."})
	metricBatchSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "nxcloud_ingest_batch_write_seconds", Help: "Time to write one batch.",
		Buckets: prometheus.ExponentialBuckets(0.002, 2, 12)})
	metricCommitLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "nxcloud_ingest_commit_latency_seconds", Help: "From a message's arrival at the broker to its points' commit.",
		Buckets: prometheus.ExponentialBuckets(0.002, 2, 14)})
	metricHotErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nxcloud_ingest_hot_state_errors_total", Help: "Failed updates of the hot state in Redis."})
)

// Collectors returns the pipeline's Prometheus collectors, plus gauges read
// from p's live counters.
func (p *Pipeline) Collectors() []prometheus.Collector {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	return []prometheus.Collector{
		metricPointsCommitted, metricRejected, metricWriteErrors, metricBatchSeconds, metricCommitLatency, metricHotErrors,
		gauge("nxcloud_ingest_spool_records", "Messages accepted (in the spool) and not yet committed.", func() float64 { return float64(p.spool.Stats().Pending) }),
		gauge("nxcloud_ingest_spool_bytes", "Bytes the spool holds (on disk, or in memory without a spool directory).", func() float64 { return float64(p.spool.Stats().Bytes) }),
		gauge("nxcloud_ingest_spool_budget_bytes", "The spool's budget: beyond it QoS 1 publishes wait and QoS 0 ones are dropped.", func() float64 { return float64(p.spool.Stats().Budget) }),
		counter("nxcloud_ingest_spool_fsyncs_total", "Group fsyncs of the spool.", func() float64 { return float64(p.spool.Fsyncs.Load()) }),
		counter("nxcloud_ingest_spool_fsync_seconds_total", "Time spent in spool writes and fsyncs.", func() float64 { return float64(p.spool.FsyncNanos.Load()) / 1e9 }),
		counter("nxcloud_ingest_points_duplicate_total", "Points not stored again: the same device, metric and ts was already stored.", func() float64 { return float64(p.stats.PointsDuplicate.Load()) }),
		counter("nxcloud_ingest_refused_total", "QoS 1 messages refused (not acknowledged) for lack of room or at shutdown.", func() float64 { return float64(p.stats.Refused.Load()) }),
		counter("nxcloud_ingest_messages_total", "Messages handed to ingest.", func() float64 { return float64(p.stats.Messages.Load()) }),
		counter("nxcloud_ingest_qos0_dropped_total", "QoS 0 messages dropped under overload.", func() float64 { return float64(p.stats.PointsDropped.Load()) }),
		counter("nxcloud_ingest_dead_letters_total", "Dead letters written.", func() float64 { return float64(p.stats.DeadLetters.Load()) }),
	}
}
