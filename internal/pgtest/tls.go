package pgtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// NewTLSCluster starts a cluster of the test's own that also serves TLS
// (ssl=on), with a server certificate for 127.0.0.1 and localhost signed by
// a CA made for this cluster alone. It returns the cluster and that CA's
// certificate (PEM), which a client gives as sslrootcert to connect with
// sslmode=verify-full. Plain connections are still accepted, so URL and
// NewDatabase work as for any cluster.
func NewTLSCluster(t testing.TB) (*Cluster, []byte) {
	t.Helper()
	ca, err := NewCA("pgtest CA")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	c, err := startCluster(ca, false)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(c.destroy)
	return c, ca.CertPEM
}

// CA is a throwaway certificate authority for tests.
type CA struct {
	// CertPEM is the CA's certificate, PEM-encoded.
	CertPEM []byte
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
}

// NewCA makes a self-signed CA valid for a day.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("while making a CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("while making a CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), cert: cert, key: key}, nil
}

// issueServer returns a server certificate for 127.0.0.1 and localhost and
// its key, both PEM-encoded.
func (ca *CA) issueServer() (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// writeServerCert puts server.crt and server.key (PostgreSQL's default
// names) into the data directory, owned by the server's account: postgres
// refuses a key that others can read.
func (c *Cluster) writeServerCert(ca *CA) error {
	certPEM, keyPEM, err := ca.issueServer()
	if err != nil {
		return fmt.Errorf("while issuing the server certificate: %w", err)
	}
	for name, b := range map[string][]byte{"server.crt": certPEM, "server.key": keyPEM} {
		p := filepath.Join(c.dataDir(), name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return err
		}
		if c.cred != nil {
			if err := os.Chown(p, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
				return err
			}
		}
	}
	c.tls = true
	return nil
}
