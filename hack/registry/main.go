// Command registry is a private OCI registry for the local cluster's
// end-to-end tests: go-containerregistry's registry (with the referrers
// API), blobs on disk, over TLS with a certificate from a throwaway CA, and
// HTTP basic authentication on every request, pulls included, as a private
// registry has. It listens on one address only (the node address).
//
//	REGISTRY_PASSWORD=… registry --addr 10.231.0.1:5000 --dir DIR --user e2e
//
// DIR receives ca.crt (the CA clients must trust) and the blobs. The
// password comes from the environment, so it shows in no process list.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("addr", "", "host:port to listen on; the host (an IP address) is also the certificate's (required)")
	dir := flag.String("dir", "", "directory for ca.crt and the blobs (required)")
	user := flag.String("user", "", "the one user name accepted (required; the password is $REGISTRY_PASSWORD)")
	flag.Parse()
	pass := os.Getenv("REGISTRY_PASSWORD")
	if *addr == "" || *dir == "" || *user == "" || pass == "" {
		fmt.Fprintln(os.Stderr, "usage: REGISTRY_PASSWORD=… registry --addr IP:PORT --dir DIR --user NAME")
		os.Exit(2)
	}
	if err := run(*addr, *dir, *user, pass); err != nil {
		log.Fatal("registry: ", err)
	}
}

func run(addr, dir, user, pass string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return fmt.Errorf("%s is not an IP address", host)
	}
	if err := os.MkdirAll(filepath.Join(dir, "blobs"), 0o700); err != nil {
		return err
	}
	caPEM, cert, err := certificates(ip)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), caPEM, 0o644); err != nil {
		return err
	}
	reg := registry.New(registry.WithReferrersSupport(true),
		registry.WithBlobHandler(registry.NewDiskBlobHandler(filepath.Join(dir, "blobs"))))
	srv := &http.Server{
		Addr:              addr,
		Handler:           basicAuth(user, pass, reg),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		// HTTP/1.1 only: over HTTP/2, parallel blob uploads share one
		// connection's flow-control window while the registry reads one
		// upload at a time, and a push stalls for good.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	log.Printf("registry: serving https://%s (basic authentication, user %s); CA in %s", addr, user, filepath.Join(dir, "ca.crt"))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sig; _ = srv.Close() }()
	if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// basicAuth answers 401 with a Basic challenge to any request without the
// user's credentials, as a private registry does for pulls and pushes.
func basicAuth(user, pass string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 ||
			subtle.ConstantTimeCompare([]byte(p), []byte(pass)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="ehr-e2e-registry"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// certificates makes a throwaway CA and a serving certificate for ip
// signed by it; the CA's key is never written anywhere.
func certificates(ip net.IP) (caPEM []byte, cert tls.Certificate, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, cert, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ehr-e2e registry CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, cert, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, cert, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: ip.String()},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{ip}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, cert, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, cert, err
	}
	cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), cert, nil
}
