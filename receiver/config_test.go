package receiver

import (
	"strings"
	"testing"
	"time"
)

func validConfig() Config {
	return Config{
		EHR: "nexus", Location: time.UTC, APIKey: "k", Secret: []byte("s"),
		MaxBodyBytes: 4194304, MaxBatchSize: 1000, RequestsPerSecond: 50, Burst: 100,
		OnInvalid: Reject, Listen: ":8080", MetricsListen: ":9090",
	}
}

func TestConfigValidate(t *testing.T) {
	if err := validConfig().Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	for _, tc := range []struct {
		mutate func(*Config)
		want   string
	}{
		{func(c *Config) { c.EHR = "Nexus" }, "DNS label"},
		{func(c *Config) { c.EHR = "" }, "DNS label"},
		{func(c *Config) { c.APIKey = "" }, "API key is empty"},
		{func(c *Config) { c.Secret = nil }, "webhook secret is empty"},
		{func(c *Config) { c.MaxBodyBytes = 0 }, "max-body-bytes"},
		{func(c *Config) { c.MaxInflightBodyBytes = -1 }, "max-inflight-body-bytes must not be negative"},
		{func(c *Config) { c.MaxInflightBodyBytes = c.MaxBodyBytes - 1 }, "max-inflight-body-bytes (4194303) must be at least max-body-bytes"},
		{func(c *Config) { c.MaxBatchSize = 0 }, "max-batch-size"},
		{func(c *Config) { c.RequestsPerSecond = 0 }, "requests-per-second"},
		{func(c *Config) { c.Burst = 0 }, "burst"},
		{func(c *Config) { c.OnInvalid = "reject" }, "on-invalid"},
		{func(c *Config) { c.MetricsListen = c.Listen }, "must differ"},
		{func(c *Config) { c.Location = nil }, "time zone"},
	} {
		c := validConfig()
		tc.mutate(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate() = %v, want an error about %q", err, tc.want)
		}
	}
}

// ValidateSettings leaves the time zone and the credentials to the caller
// and checks the rest as Validate does.
func TestConfigValidateSettings(t *testing.T) {
	c := validConfig()
	c.Location, c.APIKey, c.Secret = nil, "", nil
	if err := c.ValidateSettings(); err != nil {
		t.Fatalf("ValidateSettings() = %v, want nil without the time zone and the credentials", err)
	}
	c.EHR, c.Burst = "", 0
	err := c.ValidateSettings()
	if err == nil || !strings.Contains(err.Error(), "ehr is required") || !strings.Contains(err.Error(), "burst") {
		t.Errorf("ValidateSettings() = %v, want errors about the missing ehr and the burst", err)
	}
}

func TestValidRequestID(t *testing.T) {
	for id, want := range map[string]bool{
		"abc-123": true, "0b6e2c1a-3f1e-4c5e-9a59-1a2b3c4d5e6f": true, "trace:1/2+3=": true,
		"": false, "has space": false, "new\nline": false, strings.Repeat("a", 129): false, "é": false,
	} {
		if got := validRequestID(id); got != want {
			t.Errorf("validRequestID(%q) = %v, want %v", id, got, want)
		}
	}
}
