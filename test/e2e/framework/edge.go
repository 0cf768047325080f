package framework

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"strings"
	"time"
)

// The local edge (hack/local-cluster/traefik.yaml): Traefik serves the
// IngressClass and the GatewayClass of this name.
const EdgeClass = "traefik"

// EdgeGateway is the Gateway the tests and `make dev` make in the edge's
// namespace: the platform's object, which tenants' HTTPRoutes attach to.
const EdgeGateway = "edge"

// CA is a throwaway certificate authority, made with Go's crypto, for the
// TLS certificates of the tenants' hostnames.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	PEM  []byte // the CA certificate, for a client's --cacert
}

// NewCA makes a CA valid for a day.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("while making CA %s: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Cert is a serving certificate and its key, PEM-encoded.
type Cert struct{ CertPEM, KeyPEM []byte }

// Issue signs a serving certificate for host.
func (ca *CA) Issue(host string) (Cert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Cert{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return Cert{}, fmt.Errorf("while signing a certificate for %s: %w", host, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return Cert{}, err
	}
	return Cert{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// TLSSecretYAML is a kubernetes.io/tls Secret holding c.
func TLSSecretYAML(namespace, name string, c Cert) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: %s, namespace: %s}
type: kubernetes.io/tls
stringData:
  tls.crt: %q
  tls.key: %q
`, name, namespace, c.CertPEM, c.KeyPEM)
}

// Listener is one HTTPS listener of the edge Gateway: a hostname and the
// Secret (in the edge's namespace) with its certificate.
type Listener struct{ Name, Host, SecretName string }

// GatewayYAML is the edge Gateway with one HTTPS listener per entry of
// listeners, on the edge's HTTPS port, accepting routes from every
// namespace.
func (e *Env) GatewayYAML(listeners ...Listener) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: %s, namespace: %s}
spec:
  gatewayClassName: %s
  listeners:
`, EdgeGateway, e.EdgeNamespace, EdgeClass)
	for _, l := range listeners {
		fmt.Fprintf(&b, `  - name: %s
    hostname: %s
    port: %d
    protocol: HTTPS
    tls: {mode: Terminate, certificateRefs: [{name: %s}]}
    allowedRoutes: {namespaces: {from: All}}
`, l.Name, l.Host, e.EdgeHTTPSPort, l.SecretName)
	}
	return b.String()
}

// EdgeURL is the webhook URL of ehr at host through the edge's HTTPS port.
func (e *Env) EdgeURL(host, ehr string) string {
	return fmt.Sprintf("https://%s:%d/v2/webhooks/%s/sync-appointments", host, e.EdgeHTTPSPort, ehr)
}

// EdgeResolve is the `send --resolve` value that sends host's requests to
// the edge (curl's HOST:PORT:ADDR).
func (e *Env) EdgeResolve(host string) string {
	return fmt.Sprintf("%s:%d:%s", host, e.EdgeHTTPSPort, e.NodeIP)
}

// EdgeClient is an HTTP client that sends every https URL on the edge's
// port to the edge at the node address, whatever the hostname (no DNS is
// asked), and trusts only caPEM. A nil caPEM skips verification, for the
// one check that needs an answer from a host the edge no longer has a
// certificate for.
func (e *Env) EdgeClient(caPEM []byte) *http.Client {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if caPEM == nil {
		tlsConf.InsecureSkipVerify = true
	} else {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		tlsConf.RootCAs = pool
	}
	edge := net.JoinHostPort(e.NodeIP, fmt.Sprint(e.EdgeHTTPSPort))
	var d net.Dialer
	return &http.Client{
		Timeout: 15 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   tlsConf,
			ForceAttemptHTTP2: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if _, port, _ := net.SplitHostPort(addr); port != fmt.Sprint(e.EdgeHTTPSPort) {
					return nil, fmt.Errorf("the edge client only dials the edge's port %d, not %s", e.EdgeHTTPSPort, addr)
				}
				return d.DialContext(ctx, network, edge)
			},
		},
	}
}
