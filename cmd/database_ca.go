package cmd

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// withDatabaseCA points the database URL's sslrootcert at caFile, the CA
// the operator mounts from spec.database.ca, so lib/pq verifies the
// server against it. An sslmode the URL leaves out becomes verify-full; one
// that would not verify (disable, allow, prefer) is refused rather than
// silently ignoring the CA. Errors never hold the URL: it has a password.
func withDatabaseCA(dbURL, caFile string) (string, error) {
	if !strings.HasPrefix(dbURL, "postgres://") && !strings.HasPrefix(dbURL, "postgresql://") {
		return "", errors.New("--database-ca-file needs the database URL in the postgres:// form")
	}
	u, err := url.Parse(dbURL)
	if err != nil {
		return "", errors.New("the database URL is not a valid URL")
	}
	q := u.Query()
	switch mode := q.Get("sslmode"); mode {
	case "":
		q.Set("sslmode", "verify-full")
	case "require", "verify-ca", "verify-full":
	default:
		return "", fmt.Errorf("the database URL has sslmode=%s, which does not verify the server: use sslmode=verify-full with --database-ca-file", mode)
	}
	// The mounted CA replaces one the URL names: that path is not in the pod.
	q.Set("sslrootcert", caFile)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// checkCAFile makes a missing or unreadable CA a configuration error at
// start, instead of every connection failing later.
func checkCAFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--database-ca-file: %w", err)
	}
	n := 0
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("--database-ca-file %s: a certificate does not parse: %w", path, err)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("--database-ca-file %s holds no PEM certificate", path)
	}
	return nil
}
