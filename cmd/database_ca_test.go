package cmd

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWithDatabaseCA(t *testing.T) {
	const ca = "/etc/ehr-operator/database-ca/ca.crt"
	for _, tc := range []struct {
		name, in, wantMode, wantErr string
	}{
		{name: "no sslmode becomes verify-full", in: "postgres://app:pw@db:5432/app", wantMode: "verify-full"},
		{name: "verify-full kept", in: "postgresql://app:pw@db/app?sslmode=verify-full&connect_timeout=5", wantMode: "verify-full"},
		{name: "verify-ca kept", in: "postgres://app:pw@db/app?sslmode=verify-ca", wantMode: "verify-ca"},
		{name: "the URL's sslrootcert is replaced", in: "postgres://app:pw@db/app?sslmode=require&sslrootcert=/nowhere", wantMode: "require"},
		{name: "disable refused", in: "postgres://app:pw@db/app?sslmode=disable", wantErr: "sslmode=disable"},
		{name: "prefer refused", in: "postgres://app:pw@db/app?sslmode=prefer", wantErr: "sslmode=prefer"},
		{name: "key=value form refused", in: "host=db user=app password=pw", wantErr: "postgres:// form"},
		{name: "bad URL", in: "postgres://app:pw@db:port/app", wantErr: "not a valid URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := withDatabaseCA(tc.in, ca)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "pw") {
					t.Errorf("the error shows the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			u, err := url.Parse(got)
			if err != nil {
				t.Fatal(err)
			}
			q := u.Query()
			if q.Get("sslrootcert") != ca || q.Get("sslmode") != tc.wantMode || len(q["sslrootcert"]) != 1 {
				t.Errorf("%s: sslrootcert %q sslmode %q, want %s and %s", got, q["sslrootcert"], q.Get("sslmode"), ca, tc.wantMode)
			}
			if p, _ := u.User.Password(); p != "pw" || u.Host == "" {
				t.Errorf("%s lost the credentials or host", got)
			}
		})
	}
}

func TestCheckCAFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if err := checkCAFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing CA file was accepted")
	}
	if err := checkCAFile(write("empty", "not a certificate\n")); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("a file without a certificate: %v", err)
	}
	if err := checkCAFile(write("bad", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")); err == nil {
		t.Error("a certificate that does not parse was accepted")
	}
}
