package cmd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	// The zone database the operator checked spec.timeZone against (it
	// embeds the same one): images carry no /usr/share/zoneinfo, so the
	// receiver reads times by the rules of the Go release it was built with,
	// not of whatever machine built the image.
	_ "time/tzdata"

	"github.com/spf13/cobra"

	"github.com/insighthealth/ehr-operator/receiver"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// receiverFlags are the flags of architecture.md, "Configuration and operation", each with its environment fallback.
type receiverFlags struct {
	ehr, credentialsDir, timeZone    string
	databaseURL                      *secretFlag
	databaseCAFile                   string
	maxBodyBytes                     int64
	maxBatchSize, burst              int
	requestsPerSecond                float64
	onInvalid, listen, metricsListen string
	migrate                          bool
	// memoryLimit is the container's (downward API); 0 is unknown.
	memoryLimit, maxInflightBodyBytes int64
	// retention periods (0: keep) and how often they are applied.
	retainDeliveryLog, retainQuarantine, retainQuarantineContent, retainHistory, retentionInterval time.Duration
	logLevel                                                                                       string
}

func newReceiverCommand() *cobra.Command {
	var f receiverFlags
	c := &cobra.Command{
		Use:   "receiver",
		Short: "Serve POST /v2/webhooks/{ehr}/sync-appointments for one EHR",
		Long: `Serve the Sync Appointments webhook of one EHR into PostgreSQL.

Every flag falls back to an environment variable named after it
(--database-url → DATABASE_URL, --on-invalid → ON_INVALID, …).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := BindEnv(c.Flags()); err != nil {
				return err
			}
			return runReceiver(c.Context(), f)
		},
	}
	fs := c.Flags()
	fs.StringVar(&f.ehr, "ehr", "", "the {ehr} path segment this receiver serves (required)")
	f.databaseURL = addSecretFlag(fs, "database-url", "postgres:// URL of the appointments database", "the database URL")
	fs.StringVar(&f.databaseCAFile, "database-ca-file", "", "PEM file of the CA that signs the database server's certificate; set, the URL's sslrootcert points at it and a missing sslmode becomes verify-full")
	fs.StringVar(&f.credentialsDir, "credentials-dir", "", "directory with files api-key, webhook-secret and optionally api-key-previous and webhook-secret-previous (required)")
	fs.StringVar(&f.timeZone, "time-zone", "UTC", "IANA time zone the EHR's MM/DD/YYYY HH:MM times are in")
	fs.Int64Var(&f.maxBodyBytes, "max-body-bytes", 4194304, "largest accepted body; larger answers 413")
	fs.IntVar(&f.maxBatchSize, "max-batch-size", 1000, "most appointments accepted in one request; more answers 413")
	fs.Float64Var(&f.requestsPerSecond, "requests-per-second", 50, "sustained request rate for this EHR; above it answers 429")
	fs.IntVar(&f.burst, "burst", 100, "requests allowed at once above the sustained rate")
	fs.StringVar(&f.onInvalid, "on-invalid", string(receiver.Reject), "Reject (422, nothing stored) or Quarantine (200, invalid entries kept apart)")
	fs.StringVar(&f.listen, "listen", ":8080", "address of the webhook server")
	fs.StringVar(&f.metricsListen, "metrics-listen", ":9090", "address of /healthz, /readyz, /dbz and /metrics")
	fs.BoolVar(&f.migrate, "migrate", true, "apply the database migrations in the background at start (the webhook answers 503 until done); false: assume they are applied")
	fs.StringVar(&f.logLevel, "log-level", "info", "least severe log lines written: debug, info (one line per request), warn or error")
	fs.Int64Var(&f.memoryLimit, "memory-limit", 0, "the container's memory limit in bytes, for the Go memory limit and the default of --max-inflight-body-bytes (0: unknown)")
	fs.Int64Var(&f.maxInflightBodyBytes, "max-inflight-body-bytes", 0, "most bytes of request bodies held at once; past it requests are answered 503 (0: derived from --memory-limit)")
	fs.DurationVar(&f.retainDeliveryLog, "retain-delivery-log", 0, "delete delivery log rows older than this that nothing refers to (0: keep)")
	fs.DurationVar(&f.retainQuarantine, "retain-quarantine", 0, "delete quarantined entries older than this (0: keep)")
	fs.DurationVar(&f.retainQuarantineContent, "retain-quarantine-content", 0, "drop the raw body (patient data) of quarantined entries older than this, keeping the row (0: keep)")
	fs.DurationVar(&f.retainHistory, "retain-history", 0, "delete appointment history rows older than this (0: keep)")
	fs.DurationVar(&f.retentionInterval, "retention-interval", receiver.DefaultRetentionInterval, "how often the retention is applied")
	return c
}

func runReceiver(ctx context.Context, f receiverFlags) error {
	level, err := ParseLogLevel(f.logLevel)
	if err != nil {
		return err
	}
	base := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(base)
	cfg, dbURL, err := receiverConfig(f)
	if err != nil {
		return fmt.Errorf("while reading the receiver configuration: %w", err)
	}
	// Every line names the EHR, the store's too: it logs through slog's
	// default logger (the pool's cap, the migrations). receiver.New adds
	// the attribute to its own logger, so it gets base.
	log := base.With("ehr", cfg.EHR)
	slog.SetDefault(log)
	setGoMemoryLimit(f, cfg, log)
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// After the first signal, a second one ends the process at once.
	go func() { <-ctx.Done(); stop() }()

	st, err := store.Open(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("while opening the store: %w", err)
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error("Closing the store failed", "error", err.Error())
		}
		log.Info("Store closed")
	}()
	srv, err := receiver.New(cfg, st, base)
	if err != nil {
		return err
	}
	// In the background: a receiver started while the database is away
	// serves 503 with Retry-After rather than exiting into CrashLoopBackOff.
	if f.migrate {
		srv.MigrateInBackground(st)
	}
	if cfg.Retention.Enabled() {
		srv.PruneInBackground(st)
	}
	return srv.Run(ctx)
}

// receiverConfig turns the flags into a checked configuration and the
// database URL. It reports every mistake it finds, never a secret's value.
// It reads the time zone and the credentials, reporting its own errors about
// them, and leaves every other check to Config.ValidateSettings.
func receiverConfig(f receiverFlags) (receiver.Config, string, error) {
	var errs []error
	cfg := receiver.Config{
		EHR:               f.ehr,
		MaxBodyBytes:      f.maxBodyBytes,
		MaxBatchSize:      f.maxBatchSize,
		RequestsPerSecond: f.requestsPerSecond,
		Burst:             f.burst,
		OnInvalid:         receiver.OnInvalid(f.onInvalid),
		Listen:            f.listen,
		MetricsListen:     f.metricsListen,
		Retention: store.Retention{
			DeliveryLog: f.retainDeliveryLog, Quarantine: f.retainQuarantine,
			QuarantineContent: f.retainQuarantineContent, History: f.retainHistory,
		},
		RetentionInterval: f.retentionInterval,
	}
	// LoadLocation takes "" for UTC and "Local" for the machine's zone;
	// a receiver names its zone.
	loc, err := time.LoadLocation(f.timeZone)
	if err != nil || f.timeZone == "" || strings.EqualFold(f.timeZone, "Local") {
		errs = append(errs, fmt.Errorf("--time-zone %q is not an IANA time zone name", f.timeZone))
	} else {
		cfg.Location = loc
	}

	dbURL, err := f.databaseURL.get()
	if err != nil {
		errs = append(errs, err)
	} else if f.databaseCAFile != "" {
		if err := checkCAFile(f.databaseCAFile); err != nil {
			errs = append(errs, err)
		} else if dbURL, err = withDatabaseCA(dbURL, f.databaseCAFile); err != nil {
			errs = append(errs, err)
		}
	}

	if f.credentialsDir == "" {
		errs = append(errs, errors.New("--credentials-dir (CREDENTIALS_DIR) is required"))
	} else {
		// The previous ones are optional: absent or empty, none.
		credential := func(name string, optional bool) string {
			path := filepath.Join(f.credentialsDir, name)
			v, err := readCredential(path)
			if err == nil {
				err = credentialLength(path, v)
			}
			none := errors.Is(err, os.ErrNotExist) || errors.Is(err, errEmptyCredential)
			if err != nil && (!optional || !none) {
				errs = append(errs, err)
			}
			return v
		}
		key, secret := credential("api-key", false), credential("webhook-secret", false)
		prevKey, prev := credential("api-key-previous", true), credential("webhook-secret-previous", true)
		cfg.APIKey, cfg.PreviousAPIKey, cfg.Secret = key, prevKey, []byte(secret)
		if prev != "" {
			cfg.PreviousSecret = []byte(prev)
		}
	}
	if err := memorySettings(f, &cfg); err != nil {
		errs = append(errs, err)
	}
	if err := cfg.ValidateSettings(); err != nil {
		errs = append(errs, err)
	}
	return cfg, dbURL, errors.Join(errs...)
}

// ParseLogLevel reads a --log-level value: debug, info, warn or error (the
// manager checks its --receiver-log-level with it too).
func ParseLogLevel(s string) (slog.Level, error) {
	switch s {
	case "debug", "info", "warn", "error":
		var l slog.Level
		return l, l.UnmarshalText([]byte(s))
	}
	return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
}
