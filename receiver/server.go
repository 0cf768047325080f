package receiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"
	"golang.org/x/time/rate"

	"github.com/insighthealth/ehr-operator/receiver/store"
)

// Store is what the receiver needs of receiver/store.Store.
type Store interface {
	Write(ctx context.Context, b store.Batch) (store.Result, error)
	RecordDeliveries(ctx context.Context, ds []store.Delivery) error
	Ping(ctx context.Context) error
}

// Server timeouts (architecture.md, "Configuration and operation"). WriteTimeout leaves room for writeTimeout,
// the longest a batch may wait for its commit.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 60 * time.Second
	idleTimeout       = 120 * time.Second
	// shutdownTimeout covers the longest a request can wait for its answer
	// (40 s: decisions.md, "A 503 says not stored only when it is true").
	shutdownTimeout   = 45 * time.Second
	writeBatchTimeout = 20 * time.Second
	// retryAfterUnavailable is the Retry-After of a 503, in seconds.
	retryAfterUnavailable = 5
	// MaxConnections bounds the webhook port's open connections, which cost
	// memory the in-flight budget does not see (about 12 KB each, idle):
	// sizing.Baseline counts a few hundred. Past it a connection waits in
	// the kernel's queue until one closes. An audit opened 15,000 idle
	// connections and took a receiver from 122 to 309 MB resident.
	MaxConnections = 512
)

// Server answers the webhook and serves the probes and metrics.
type Server struct {
	cfg      Config
	store    Store
	log      *slog.Logger
	limiter  *rate.Limiter
	metrics  *metrics
	db       *dbState
	versions *versionMemory
	stopping atomic.Bool
	// inflight bounds the bodies held at once; deliveries writes the
	// delivery log of failed requests off the request path.
	inflight   *inflight
	deliveries *deliveryLog
	// now is the clock, for "birth date in the future" and received_at.
	now func() time.Time
	// pruner, when set, applies cfg.Retention in the background;
	// retentionRegistered: the last-run gauge is on /metrics (after a run).
	pruner              Pruner
	retention           *retentionMetrics
	retentionRegistered bool
}

// New checks cfg and returns a server writing to st and logging to log.
func New(cfg Config, st Store, log *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("while checking the receiver configuration: %w", err)
	}
	// Every line of the server names its EHR.
	log = log.With("ehr", cfg.EHR)
	s := &Server{
		cfg:     cfg,
		store:   st,
		log:     log,
		limiter: rate.NewLimiter(rate.Limit(cfg.RequestsPerSecond), cfg.Burst),
		metrics: newMetrics(cfg.EHR),
		db:      newDBState(cfg.EHR, log),
		now:     time.Now,
	}
	s.metrics.registry.MustRegister(s.db)
	if rc, ok := st.(interface{ RefusedConnections() uint64 }); ok {
		s.metrics.registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "ehr_receiver", Name: "database_connections_refused_total", ConstLabels: prometheus.Labels{"ehr": cfg.EHR},
			Help: "New database connections the server refused for want of a free slot (SQLSTATE 53300: max_connections, or a CONNECTION LIMIT).",
		}, func() float64 { return float64(rc.RefusedConnections()) }))
	}
	s.versions = newVersionMemory(cfg.EHR, s.metrics.registry)
	s.inflight = newInflight(cfg, s.metrics.registry)
	s.retention = newRetentionMetrics(cfg.EHR, s.metrics.registry)
	// A closure, not st.RecordDeliveries: a server built without a store
	// (tests of the probes) must not panic here.
	record := func(ctx context.Context, ds []store.Delivery) error { return s.store.RecordDeliveries(ctx, ds) }
	s.deliveries = newDeliveryLog(record, log, cfg.EHR, s.metrics.registry)
	return s, nil
}

// Handler is the webhook server's handler: only the sync route exists;
// everything else is a 404 in the same JSON shape.
func (s *Server) Handler() http.Handler {
	gin.SetMode(gin.ReleaseMode)
	r := gin.New() // no gin logger: it would log paths and errors we do not control
	r.RedirectTrailingSlash = false
	r.RedirectFixedPath = false
	r.HandleMethodNotAllowed = false // the handler answers 405 itself, after the {ehr} check
	r.Use(s.recoverer, requestID)
	r.Any(SyncPath, s.sync)
	r.NoRoute(s.noRoute)
	return r
}

// SyncPath is the only route of the webhook server.
const SyncPath = "/v2/webhooks/:ehr/sync-appointments"

// noRoute answers what gin's router did not match. Any registers only nine
// methods, so a request for the sync path with another one (PROPFIND, or
// any token a client makes up) arrives here: it goes through the sync
// handler's checks like a GET would, so that it is answered 404 for
// another EHR and 405 with Allow: POST for this one, as documented.
// Everything else is a 404.
func (s *Server) noRoute(c *gin.Context) {
	if ehr, ok := syncPathEHR(c.Request.URL.Path); ok {
		c.Params = append(c.Params[:0], gin.Param{Key: "ehr", Value: ehr})
		s.sync(c)
		return
	}
	s.notFoundRoute(c)
}

// syncPathEHR is the {ehr} segment of path when path is SyncPath's shape,
// matched as gin's router matches it (the decoded path, one non-empty
// segment, no trailing slash).
func syncPathEHR(path string) (string, bool) {
	prefix, suffix, _ := strings.Cut(SyncPath, ":ehr")
	rest, ok := strings.CutPrefix(path, prefix)
	if !ok {
		return "", false
	}
	ehr, ok := strings.CutSuffix(rest, suffix)
	if !ok || ehr == "" || strings.Contains(ehr, "/") {
		return "", false
	}
	return ehr, true
}

// MetricsHandler serves /healthz, /readyz, /dbz and /metrics. Neither probe
// follows the database: while it is away the pod stays in its Service and
// answers 503 with Retry-After itself; /dbz reports the database's state.
// Only a database that refused the receiver's settings before it ever
// answered keeps /readyz failing (dbState.refusedAtStart).
func (s *Server) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case s.stopping.Load():
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
		case !s.db.started.Load():
			http.Error(w, "starting", http.StatusServiceUnavailable)
		case s.db.refusedAtStart():
			http.Error(w, "the database refuses this receiver's settings (see its log)", http.StatusServiceUnavailable)
		default:
			_, _ = w.Write([]byte("ok\n"))
		}
	})
	mux.HandleFunc("GET /dbz", s.db.serveDBZ)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	return mux
}

// ShutdownBudget is the most a receiver takes from SIGTERM to its exit:
// the drain of in-flight requests (shutdownTimeout, 45 s), the delivery
// log's last write (deliveryFlushTimeout, left after 6 s), and closing the
// store (5 s for the writes under way, 5 s for the pool), with a little to
// spare. The operator's grace period is the preStop sleep plus this
// (controllers/resources.go; TestSIGTERMWhileTheDatabaseIsFrozen measures
// it with a database that stopped answering).
const ShutdownBudget = 65 * time.Second

// Run serves until ctx is done, then shuts down gracefully: /readyz fails
// at once, the listeners close, and in-flight requests finish (up to
// shutdownTimeout); then the delivery log is written (up to
// deliveryFlushTimeout) and the background work stops (until
// backgroundStopTimeout after ctx ended). Closing the store is the
// caller's, after Run returns.
func (s *Server) Run(ctx context.Context) error {
	lc := net.ListenConfig{}
	apiLn, err := lc.Listen(ctx, "tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("while listening on %s: %w", s.cfg.Listen, err)
	}
	apiLn = netutil.LimitListener(apiLn, MaxConnections)
	metricsLn, err := lc.Listen(ctx, "tcp", s.cfg.MetricsListen)
	if err != nil {
		_ = apiLn.Close()
		return fmt.Errorf("while listening on %s: %w", s.cfg.MetricsListen, err)
	}
	newServer := func(h http.Handler) *http.Server {
		return &http.Server{
			Handler:           h,
			ReadHeaderTimeout: readHeaderTimeout,
			ReadTimeout:       readTimeout,
			WriteTimeout:      writeTimeout,
			IdleTimeout:       idleTimeout,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		}
	}
	api, met := newServer(s.Handler()), newServer(s.MetricsHandler())
	errc := make(chan error, 2)
	go func() { errc <- api.Serve(apiLn) }()
	go func() { errc <- met.Serve(metricsLn) }()
	stopBackground := s.startBackground(ctx)
	defer stopBackground()
	s.log.Info("Receiver listening", "listen", apiLn.Addr().String(),
		"metrics_listen", metricsLn.Addr().String(), "on_invalid", string(s.cfg.OnInvalid),
		"time_zone", s.cfg.Location.String())

	select {
	case err := <-errc:
		_ = api.Close()
		_ = met.Close()
		return fmt.Errorf("while serving: %w", err)
	case <-ctx.Done():
	}
	s.stopping.Store(true)
	s.log.Info("Shutting down: readiness fails, waiting for in-flight requests")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err = api.Shutdown(sctx)
	if merr := met.Shutdown(sctx); err == nil {
		err = merr
	}
	// Before the caller closes the store.
	if !s.deliveries.close(deliveryFlushTimeout) {
		s.log.Warn("The delivery log was not written in time; exiting without it (the database does not answer?)",
			"waited", (deliveryFlushTimeout + time.Second).String())
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("while shutting down: %w", err)
	}
	s.log.Info("Requests drained")
	return nil
}

// recoverer answers 500 on a panic and logs only that it happened: gin's
// Recovery would dump the request headers, API key included.
func (s *Server) recoverer(c *gin.Context) {
	start := s.now()
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.log.Error("Handler panicked", "request_id", c.GetString(ctxRequestID))
			// The handler's own count never ran: count the 500 here, so
			// that EHRReceiverServerErrors sees it.
			code := strconv.Itoa(http.StatusInternalServerError)
			s.metrics.requests.WithLabelValues(s.cfg.EHR, code).Inc()
			s.metrics.duration.WithLabelValues(s.cfg.EHR, code).Observe(s.now().Sub(start).Seconds())
			if !c.Writer.Written() {
				writeJSON(c, http.StatusInternalServerError, errorBody(http.StatusInternalServerError, msgInternal, nil))
			}
			c.Abort()
		}
	}()
	c.Next()
}
