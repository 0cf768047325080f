// Package version holds the build's version, stamped by the Makefile with
// -ldflags "-X github.com/insighthealth/ehr-operator/internal/version.Version=…".
package version

// Version is the release this binary was built from; "dev" for local builds.
var Version = "dev"
