// Package receiver is the webhook receiver's HTTP side (architecture.md, "The request's path" and "Configuration and operation"):
// a gin server for POST /v2/webhooks/{ehr}/sync-appointments that runs the
// checks in the design's order, and a second server for health probes and
// Prometheus metrics.
package receiver

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/insighthealth/ehr-operator/receiver/store"
)

// OnInvalid says what a batch with invalid entries gets (architecture.md, "The request's path").
type OnInvalid string

const (
	// Reject answers 422 listing the invalid entries' errors (the first
	// payload.MaxListedErrors) and writes nothing.
	Reject OnInvalid = "Reject"
	// Quarantine writes the valid entries, keeps the invalid ones in
	// quarantined_entries and answers 200.
	Quarantine OnInvalid = "Quarantine"
)

// Config is everything a receiver needs besides its store.
type Config struct {
	// EHR is the {ehr} path segment this receiver serves.
	EHR string
	// Location is the time zone the EHR's MM/DD/YYYY HH:MM times are in.
	Location *time.Location
	// APIKey is the expected X-API-Key; PreviousAPIKey, optional, is also
	// accepted while a key is rotated.
	APIKey, PreviousAPIKey string
	// Secret and PreviousSecret sign the bodies; PreviousSecret is optional
	// (rotation).
	Secret, PreviousSecret []byte

	MaxBodyBytes      int64
	MaxBatchSize      int
	RequestsPerSecond float64
	Burst             int
	OnInvalid         OnInvalid

	// MaxInflightBodyBytes bounds the bytes of bodies held at once (past
	// it requests are answered 503); 0 is sizing.DefaultInflight, or
	// MaxBodyBytes when that is more.
	MaxInflightBodyBytes int64

	// Listen and MetricsListen are the two servers' addresses.
	Listen, MetricsListen string

	// Retention is how long this EHR's rows are kept (zero: for ever);
	// RetentionInterval how often it is applied (0: hourly).
	Retention         store.Retention
	RetentionInterval time.Duration
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidEHR reports whether name can be an EHR's: a DNS label, as
// ValidateSettings requires of a receiver's.
func ValidEHR(name string) bool { return dnsLabel.MatchString(name) }

// Validate reports every configuration mistake at once.
func (c Config) Validate() error {
	errs := []error{c.ValidateSettings()}
	if c.Location == nil {
		errs = append(errs, errors.New("time zone is not set"))
	}
	if c.APIKey == "" {
		errs = append(errs, errors.New("the API key is empty"))
	}
	if len(c.Secret) == 0 {
		errs = append(errs, errors.New("the webhook secret is empty"))
	}
	return errors.Join(errs...)
}

// ValidateSettings is Validate without the time zone and the credentials,
// for a caller that loads those itself and has reported its own errors
// about them (which file, which zone name).
func (c Config) ValidateSettings() error {
	var errs []error
	switch {
	case c.EHR == "":
		errs = append(errs, errors.New("ehr is required (a DNS label: lower-case letters, digits and '-', at most 63)"))
	case !dnsLabel.MatchString(c.EHR):
		errs = append(errs, errors.New("ehr must be a DNS label (lower-case letters, digits and '-', at most 63)"))
	}
	if c.MaxBodyBytes < 1 {
		errs = append(errs, fmt.Errorf("max-body-bytes must be at least 1, not %d", c.MaxBodyBytes))
	}
	if c.MaxInflightBodyBytes < 0 {
		errs = append(errs, fmt.Errorf("max-inflight-body-bytes must not be negative, not %d", c.MaxInflightBodyBytes))
	} else if c.MaxInflightBodyBytes > 0 && c.MaxInflightBodyBytes < c.MaxBodyBytes {
		errs = append(errs, fmt.Errorf("max-inflight-body-bytes (%d) must be at least max-body-bytes (%d): a body at the limit could never be read",
			c.MaxInflightBodyBytes, c.MaxBodyBytes))
	}
	if c.MaxBatchSize < 1 {
		errs = append(errs, fmt.Errorf("max-batch-size must be at least 1, not %d", c.MaxBatchSize))
	}
	if !(c.RequestsPerSecond > 0) {
		errs = append(errs, fmt.Errorf("requests-per-second must be above 0, not %v", c.RequestsPerSecond))
	}
	if c.Burst < 1 {
		errs = append(errs, fmt.Errorf("burst must be at least 1, not %d", c.Burst))
	}
	if c.OnInvalid != Reject && c.OnInvalid != Quarantine {
		errs = append(errs, fmt.Errorf("on-invalid must be %s or %s, not %q", Reject, Quarantine, c.OnInvalid))
	}
	if err := c.Retention.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.RetentionInterval < 0 {
		errs = append(errs, fmt.Errorf("retention-interval must not be negative, not %s", c.RetentionInterval))
	}
	if c.Listen == "" || c.MetricsListen == "" {
		errs = append(errs, errors.New("listen and metrics-listen addresses must be set"))
	} else if c.Listen == c.MetricsListen {
		errs = append(errs, errors.New("listen and metrics-listen must differ"))
	}
	return errors.Join(errs...)
}
