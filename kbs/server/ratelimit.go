package server

import (
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// RateLimit bounds the requests one client address may make to a route:
// PerSecond on average, Burst at once. PerSecond <= 0 turns it off (in
// Config, only < 0: the zero RateLimit means DefaultRateLimit).
type RateLimit struct {
	PerSecond float64
	Burst     int
}

// DefaultRateLimit is generous: a node restarting many pods behind one
// address stays well below it, a client looping on auth does not.
var DefaultRateLimit = RateLimit{PerSecond: 20, Burst: 100}

// Bounds of a limiter table. A client idle for limiterIdle is forgotten
// (it then starts again with a full burst); beyond maxClients addresses
// seen within that time, new ones are refused until old ones age out.
const (
	limiterIdle = 5 * time.Minute
	maxClients  = 100000
)

// limiter holds one token bucket per client address.
type limiter struct {
	limit RateLimit
	now   func() time.Time

	mu        sync.Mutex
	clients   map[string]*client
	lastSweep time.Time
}

type client struct {
	bucket *rate.Limiter
	seen   time.Time
}

func newLimiter(l RateLimit) *limiter {
	if l.PerSecond <= 0 {
		return nil
	}
	if l.Burst < 1 {
		l.Burst = 1
	}
	return &limiter{limit: l, now: time.Now, clients: map[string]*client{}}
}

// allow takes one token for addr. When none is left it returns false and
// how long until one is.
func (l *limiter) allow(addr string) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[addr]
	if c == nil {
		if len(l.clients) >= maxClients || now.Sub(l.lastSweep) > limiterIdle {
			l.sweep(now)
		}
		if len(l.clients) >= maxClients {
			return false, limiterIdle
		}
		c = &client{bucket: rate.NewLimiter(rate.Limit(l.limit.PerSecond), l.limit.Burst)}
		l.clients[addr] = c
	}
	c.seen = now
	r := c.bucket.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

func (l *limiter) sweep(now time.Time) {
	l.lastSweep = now
	for addr, c := range l.clients {
		if now.Sub(c.seen) > limiterIdle {
			delete(l.clients, addr)
		}
	}
}

// clientAddr is the address a request is limited by: the peer's IP. A
// forwarded-for header is not trusted, since any client can send one.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// rateLimited wraps h with l; a limited client gets 429 with Retry-After
// in whole seconds (at least 1). Loopback peers are not limited unless
// Config.RateLimitLoopback: they are processes on the KBS's own host
// (benchmarks, local tools, a proxy that must do its own limiting).
func (s *Server) rateLimited(l *limiter, h http.Handler) http.Handler {
	if l == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		addr := clientAddr(r)
		if ip := net.ParseIP(addr); ip != nil && ip.IsLoopback() && !s.cfg.RateLimitLoopback {
			h.ServeHTTP(w, r)
			return
		}
		ok, wait := l.allow(addr)
		if ok {
			h.ServeHTTP(w, r)
			return
		}
		secs := max(1, int(math.Ceil(wait.Seconds())))
		s.metrics.rateLimited.WithLabelValues(r.URL.Path).Inc()
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		s.writeProblem(w, r, fail(http.StatusTooManyRequests, checkRateLimit,
			"too many requests from %s to %s (limit %g/s, burst %d); retry after %d s", clientAddr(r), r.URL.Path, l.limit.PerSecond, l.limit.Burst, secs))
	})
}
