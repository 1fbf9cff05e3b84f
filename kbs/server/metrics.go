package server

import (
	"context"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/cloak-containers/cloak/internal/version"
	"github.com/cloak-containers/cloak/kbs/store"
)

// healthTimeout bounds a storage ping of /healthz or a metrics scrape.
const healthTimeout = 2 * time.Second

// metrics live in a registry per server so that tests can run several.
type metrics struct {
	registry     *prometheus.Registry
	requests     *prometheus.HistogramVec
	attestations *prometheus.CounterVec
	releases     *prometheus.CounterVec
	rateLimited  *prometheus.CounterVec
}

func newMetrics(st store.Store) *metrics {
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
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kbs_rate_limited_total",
			Help: "Requests answered 429 by the per-client-address rate limit, by path.",
		}, []string{"path"}),
	}
	// The usual *_build_info shape: join on it to see which build answered.
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "kbs_build_info",
		Help:        "Always 1; the labels are the KBS's version, commit and Go version.",
		ConstLabels: prometheus.Labels{"version": version.Version, "commit": version.Commit, "goversion": runtime.Version()},
	})
	buildInfo.Set(1)
	// Asked at every scrape, so it is as fresh as /healthz.
	storageUp := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kbs_storage_up",
		Help: "1 if the storage backend answered a ping at this scrape, 0 if not (the KBS then answers 503 on /healthz).",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), healthTimeout)
		defer cancel()
		if st.Ping(ctx) != nil {
			return 0
		}
		return 1
	})
	m.registry.MustRegister(m.requests, m.attestations, m.releases, m.rateLimited, buildInfo, storageUp,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
