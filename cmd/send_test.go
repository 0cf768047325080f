package cmd

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/receiver/auth"
)

// runSendDry runs `send --dry-run` on a fresh root command and returns its
// output.
func runSendDry(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"send", "--dry-run", "--url", "http://127.0.0.1:1", "--ehr", "nexus"}, args...))
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

// --api-key and --secret go through the same flag-or-file helper as
// --database-url: a flag, a file, or their environment variables, the flag
// winning, and errors that name the flags but never the value.
func TestSendSecretFlags(t *testing.T) {
	dir := t.TempDir()
	body := filepath.Join(dir, "body.json")
	secretFile := filepath.Join(dir, "secret")
	keyFile := filepath.Join(dir, "key")
	for path, content := range map[string]string{body: `{"appointments":[]}`, secretFile: "file-secret\n", keyFile: "file-key\n"} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sig := func(secret string) string {
		return "X-Webhook-Signature: " + auth.Sign([]byte(secret), []byte(`{"appointments":[]}`))
	}
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		want     []string
		wantErr  string
		notInErr string
	}{
		{name: "flags", args: []string{"--api-key", "flag-key", "--secret", "flag-secret"},
			want: []string{"X-API-Key: flag-key", sig("flag-secret")}},
		{name: "files", args: []string{"--api-key-file", keyFile, "--secret-file", secretFile},
			want: []string{"X-API-Key: file-key", sig("file-secret")}},
		{name: "environment", env: map[string]string{"API_KEY": "env-key", "SECRET_FILE": secretFile},
			want: []string{"X-API-Key: env-key", sig("file-secret")}},
		{name: "flag wins over environment", args: []string{"--api-key", "flag-key"}, env: map[string]string{"API_KEY": "env-key", "SECRET": "env-secret"},
			want: []string{"X-API-Key: flag-key", sig("env-secret")}},
		{name: "both", args: []string{"--api-key", "flag-key", "--api-key-file", keyFile, "--secret", "s"},
			wantErr: "set only one of --api-key (API_KEY) and --api-key-file (API_KEY_FILE)", notInErr: "flag-key"},
		{name: "none", args: []string{"--api-key", "k"},
			wantErr: "--secret (SECRET) or --secret-file (SECRET_FILE) is required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clearFlagEnv(t, "send")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			out, err := runSendDry(t, append(tc.args, body)...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				if tc.notInErr != "" && strings.Contains(err.Error(), tc.notInErr) {
					t.Errorf("error holds the value %q: %v", tc.notInErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not hold %q:\n%s", w, out)
				}
			}
		})
	}
}

// testCA is a throwaway CA and one serving certificate it signed for host.
type testCA struct {
	certPEM []byte
	leaf    tls.Certificate
}

func newTestCA(t *testing.T, host string) testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "send test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		leaf:    tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
	}
}

// TestSendTLSResolve sends through a real TLS server that holds a
// certificate for a.example.test only, listening on 127.0.0.1: --resolve
// must connect there while the TLS server name and Host stay the hostname,
// and --cacert must be the only trust (another CA is refused).
func TestSendTLSResolve(t *testing.T) {
	const host = "a.example.test"
	ca := newTestCA(t, host)
	var gotHost, gotSNI, gotSig string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotHost, gotSNI, gotSig = r.Host, r.TLS.ServerName, r.Header.Get("X-Webhook-Signature")
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"success":true,"message":"Processed"}`)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.leaf}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	body := write("body.json", []byte(`{"appointments":[]}`))
	goodCA := write("ca.crt", ca.certPEM)
	otherCA := write("other-ca.crt", newTestCA(t, host).certPEM)
	notPEM := write("not-pem.crt", []byte("not a certificate\n"))

	url := "https://" + host + ":" + port + "/v2/webhooks/nexus/sync-appointments"
	resolve := host + ":" + port + ":127.0.0.1"
	send := func(extra ...string) (string, error) {
		t.Helper()
		clearFlagEnv(t, "send")
		root := NewRootCommand()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(append(append([]string{"send", "--url", url, "--api-key", "k", "--secret", "s", "--timeout", "10s"}, extra...), body))
		err := root.ExecuteContext(t.Context())
		return out.String(), err
	}

	out, err := send("--cacert", goodCA, "--resolve", resolve)
	if err != nil {
		t.Fatalf("send through --resolve with the right CA: %v\n%s", err, out)
	}
	if !strings.Contains(out, "200 OK") || !strings.Contains(out, `{"success":true,"message":"Processed"}`) {
		t.Errorf("output does not show the 200 and its body:\n%s", out)
	}
	if gotHost != host+":"+port || gotSNI != host {
		t.Errorf("server saw Host %q and TLS server name %q, want %q and %q", gotHost, gotSNI, host+":"+port, host)
	}
	if want := auth.Sign([]byte("s"), []byte(`{"appointments":[]}`)); gotSig != want {
		t.Errorf("server saw signature %q, want %q", gotSig, want)
	}

	// An upper-case host in --resolve still matches, as host names are case-insensitive.
	if out, err := send("--cacert", goodCA, "--resolve", strings.ToUpper(host)+":"+port+":127.0.0.1"); err != nil {
		t.Errorf("send with an upper-case --resolve host: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"a CA that did not sign the certificate", []string{"--cacert", otherCA, "--resolve", resolve}, "certificate signed by unknown authority"},
		{"the system's CAs", []string{"--resolve", resolve}, "certificate signed by unknown authority"},
		{"a CA file without a certificate", []string{"--cacert", notPEM, "--resolve", resolve}, "--cacert: " + notPEM + " holds no PEM certificate"},
		{"a missing CA file", []string{"--cacert", filepath.Join(dir, "absent"), "--resolve", resolve}, "--cacert: open"},
		{"a malformed --resolve", []string{"--cacert", goodCA, "--resolve", host + ":" + port}, "want HOST:PORT:ADDR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gotHost = ""
			out, err := send(tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q\n%s", err, tc.wantErr, out)
			}
			if gotHost != "" {
				t.Errorf("the server received a request despite %s", tc.name)
			}
		})
	}
}

func TestParseResolve(t *testing.T) {
	for _, tc := range []struct {
		in, from, to, err string
	}{
		{in: "a.example.test:8443:10.231.0.1", from: "a.example.test:8443", to: "10.231.0.1:8443"},
		{in: "A.Example.TEST:443:127.0.0.1", from: "a.example.test:443", to: "127.0.0.1:443"},
		{in: "a.example.test:8443:[::1]", from: "a.example.test:8443", to: "[::1]:8443"},
		{in: "a.example.test:8443:::1", from: "a.example.test:8443", to: "[::1]:8443"},
		{in: "a.example.test:8443", err: "want HOST:PORT:ADDR"},
		{in: ":8443:10.0.0.1", err: "want HOST:PORT:ADDR"},
		{in: "a.example.test:http:10.0.0.1", err: "want HOST:PORT:ADDR"},
		{in: "a.example.test:70000:10.0.0.1", err: "want HOST:PORT:ADDR"},
		{in: "a.example.test:8443:gateway.local", err: `"gateway.local" is not an IP address`},
	} {
		from, to, err := parseResolve(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseResolve(%q): error %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || from != tc.from || to != tc.to {
			t.Errorf("parseResolve(%q) = %q, %q, %v; want %q, %q", tc.in, from, to, err, tc.from, tc.to)
		}
	}
}

// The dry run's curl command carries --cacert and --resolve too, so that
// it reaches the same place.
func TestSendDryRunTLSFlags(t *testing.T) {
	clearFlagEnv(t, "send")
	body := filepath.Join(t.TempDir(), "body.json")
	if err := os.WriteFile(body, []byte(`{}`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runSendDry(t, "--api-key", "k", "--secret", "s", "--cacert", "/etc/ca.crt",
		"--resolve", "a.example.test:8443:10.231.0.1", body)
	if err == nil {
		t.Fatalf("a dry run read a missing --cacert file:\n%s", out)
	}
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, newTestCA(t, "a.example.test").certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = runSendDry(t, "--api-key", "k", "--secret", "s", "--cacert", ca,
		"--resolve", "a.example.test:8443:10.231.0.1", body)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--cacert '" + ca + "'", "--resolve 'a.example.test:8443:10.231.0.1'"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run does not hold %q:\n%s", want, out)
		}
	}
}

// An answer without an X-Request-ID is not the receiver's (it gives every
// answer one): send says so rather than blame the receiver for the edge's
// 503 of a suspended integration.
func TestSendNamesWhoAnswered(t *testing.T) {
	withID := true
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if withID {
			w.Header().Set("X-Request-ID", "r-1")
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "no available server")
	}))
	t.Cleanup(srv.Close)
	body := filepath.Join(t.TempDir(), "body.json")
	if err := os.WriteFile(body, []byte(`{"appointments":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	send := func() (string, error) {
		clearFlagEnv(t, "send")
		root := NewRootCommand()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs([]string{"send", "--url", srv.URL, "--ehr", "nexus", "--api-key", "k", "--secret", "s", body})
		err := root.ExecuteContext(t.Context())
		return out.String(), err
	}
	out, err := send()
	if err == nil || err.Error() != "the receiver answered 503" || !strings.Contains(out, "(X-Request-ID r-1)") {
		t.Errorf("with an X-Request-ID: %v\n%s", err, out)
	}
	withID = false
	out, err = send()
	if err == nil || err.Error() != "the edge, not the receiver, answered 503" || !strings.Contains(out, "(X-Request-ID none: not the receiver's answer)") {
		t.Errorf("without an X-Request-ID: %v\n%s", err, out)
	}
}
