package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics live in a registry per server so that tests can run several.
type metrics struct {
	registry     *prometheus.Registry
	requests     *prometheus.HistogramVec
	attestations *prometheus.CounterVec
	releases     *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kbs_http_request_duration_seconds",
			Help:    "Latency of KBS HTTP requests by route pattern and status code.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"route", "code"}),
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kbs_attestations_total",
			Help: "Attestation requests by TEE and verdict (EAR status, or rejected).",
		}, []string{"tee", "verdict"}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kbs_releases_total",
			Help: "Resource release decisions by TEE and verdict (allow, deny).",
		}, []string{"tee", "verdict"}),
	}
	m.registry.MustRegister(m.requests, m.attestations, m.releases,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
