package cmd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/insighthealth/ehr-operator/receiver/auth"
)

type sendFlags struct {
	url, ehr, requestID string
	apiKey, secret      *secretFlag
	caCert              string
	resolve             []string
	timeout             time.Duration
	dryRun              bool
}

func newSendCommand() *cobra.Command {
	var f sendFlags
	c := &cobra.Command{
		Use:   "send FILE|-",
		Short: "Sign a JSON file and POST it to a receiver, as an EHR would",
		Long: `Sign the exact bytes of FILE (or standard input with "-") with HMAC-SHA256
and POST them to the Sync Appointments endpoint with the X-API-Key and
X-Webhook-Signature headers. Prints the answer's status and body; exits
non-zero when the answer is not 2xx.

--url is either the receiver's base URL, completed with --ehr into
<url>/v2/webhooks/<ehr>/sync-appointments, or the full endpoint (a path
ending in /sync-appointments), used as it is.

--cacert trusts only the CA certificates in FILE (PEM) for an https://
URL, e.g. the local cluster's test CA; --resolve HOST:PORT:ADDR connects to
ADDR whenever the URL names HOST:PORT, like curl's, while the TLS server
name and the Host header stay HOST: how to reach a tenant's hostname at an
ingress controller before DNS points at it.

Every flag falls back to an environment variable named after it
(--api-key → API_KEY, --secret-file → SECRET_FILE, …).`,
		Example: `  ehr-operator send --url http://127.0.0.1:8080 --ehr nexus \
      --api-key-file creds/api-key --secret-file creds/webhook-secret example.json
  ehr-operator send --dry-run --url https://nexus.webhooks.example.com/v2/webhooks/nexus/sync-appointments \
      --api-key "$KEY" --secret "$SECRET" example.json
  ehr-operator send --url https://a.example.test:8443/v2/webhooks/nexus/sync-appointments \
      --cacert ca.crt --resolve a.example.test:8443:10.231.0.1 \
      --api-key-file creds/api-key --secret-file creds/webhook-secret example.json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := BindEnv(c.Flags()); err != nil {
				return err
			}
			return runSend(c, f, args[0])
		},
	}
	fs := c.Flags()
	fs.StringVar(&f.url, "url", "", "receiver base URL (with --ehr) or the full endpoint URL (required)")
	fs.StringVar(&f.ehr, "ehr", "", "EHR identifier, the {ehr} path segment")
	f.apiKey = addSecretFlag(fs, "api-key", "API key sent as X-API-Key", "the API key")
	f.secret = addSecretFlag(fs, "secret", "webhook secret the body is signed with", "the webhook secret")
	fs.StringVar(&f.requestID, "request-id", "", "X-Request-ID to send (optional)")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "time allowed for the whole request")
	fs.StringVar(&f.caCert, "cacert", "", "PEM file of the CA certificates to trust instead of the system's (https:// only)")
	fs.StringArrayVar(&f.resolve, "resolve", nil, "HOST:PORT:ADDR: connect to ADDR when the URL names HOST:PORT (repeatable)")
	fs.BoolVar(&f.dryRun, "dry-run", false, "print the signature header and an equivalent curl command instead of sending")
	return c
}

func runSend(c *cobra.Command, f sendFlags, file string) error {
	endpoint, err := sendEndpoint(f.url, f.ehr)
	if err != nil {
		return err
	}
	key, err := f.apiKey.get()
	if err != nil {
		return err
	}
	secret, err := f.secret.get()
	if err != nil {
		return err
	}
	var body []byte
	if file == "-" {
		body, err = io.ReadAll(c.InOrStdin())
	} else {
		body, err = os.ReadFile(file)
	}
	if err != nil {
		return fmt.Errorf("while reading the body: %w", err)
	}
	sig := auth.Sign([]byte(secret), body)
	out := c.OutOrStdout()
	client, err := sendClient(f.timeout, f.caCert, f.resolve)
	if err != nil {
		return err
	}

	if f.dryRun {
		data := "@" + file
		if file == "-" {
			data = "@- < FILE  # the same bytes that were signed"
		}
		fmt.Fprintf(out, "X-Webhook-Signature: %s\n\n", sig)
		fmt.Fprintf(out, "curl -sS -X POST %s \\\n", shellQuote(endpoint))
		if f.caCert != "" {
			fmt.Fprintf(out, "  --cacert %s \\\n", shellQuote(f.caCert))
		}
		for _, r := range f.resolve {
			fmt.Fprintf(out, "  --resolve %s \\\n", shellQuote(r))
		}
		fmt.Fprintf(out, "  -H 'Content-Type: application/json' \\\n  -H %s \\\n  -H %s \\\n",
			shellQuote("X-API-Key: "+key), shellQuote("X-Webhook-Signature: "+sig))
		if f.requestID != "" {
			fmt.Fprintf(out, "  -H %s \\\n", shellQuote("X-Request-ID: "+f.requestID))
		}
		if file == "-" {
			fmt.Fprintf(out, "  --data-binary %s\n", data)
		} else {
			fmt.Fprintf(out, "  --data-binary %s\n", shellQuote(data))
		}
		return nil
	}

	req, err := http.NewRequestWithContext(c.Context(), http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("while building the request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", key)
	req.Header.Set("X-Webhook-Signature", sig)
	if f.requestID != "" {
		req.Header.Set("X-Request-ID", f.requestID)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("while sending to %s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20)) // display only
	if err != nil {
		return fmt.Errorf("while reading the answer: %w", err)
	}
	// The receiver gives every answer an X-Request-ID; an answer without one
	// came from something in front of it (the edge: no route, no pods).
	id, from := resp.Header.Get("X-Request-ID"), "the receiver"
	if id == "" {
		id, from = "none: not the receiver's answer", "the edge, not the receiver,"
	}
	fmt.Fprintf(out, "%s %s (X-Request-ID %s)\n%s\n", resp.Proto, resp.Status, id, strings.TrimRight(string(answer), "\n"))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		if ra := resp.Header.Get("Retry-After"); ra != "" {
			return fmt.Errorf("%s answered %d; retry after %s s", from, resp.StatusCode, ra)
		}
		return fmt.Errorf("%s answered %d", from, resp.StatusCode)
	}
	return nil
}

// sendEndpoint builds the endpoint from a base URL and an EHR, or takes a
// full endpoint URL as it is.
func sendEndpoint(raw, ehr string) (string, error) {
	if raw == "" {
		return "", errors.New("--url (URL) is required")
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("--url must be an http:// or https:// URL, not %q", raw)
	}
	if strings.HasSuffix(u.Path, "/sync-appointments") {
		if ehr != "" && !strings.HasSuffix(u.Path, "/"+ehr+"/sync-appointments") {
			return "", fmt.Errorf("--url names another EHR than --ehr %q", ehr)
		}
		return u.String(), nil
	}
	if ehr == "" {
		return "", errors.New("--ehr (EHR) is required unless --url is the full endpoint")
	}
	return u.JoinPath("v2", "webhooks", ehr, "sync-appointments").String(), nil
}

// sendClient is the HTTP client of send: the default transport, trusting
// only the CAs of caCert when it is set, and dialling the addresses resolve
// names instead of looking hosts up.
func sendClient(timeout time.Duration, caCert string, resolve []string) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caCert != "" {
		pem, err := os.ReadFile(caCert)
		if err != nil {
			return nil, fmt.Errorf("--cacert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--cacert: %s holds no PEM certificate", caCert)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if len(resolve) > 0 {
		to := make(map[string]string, len(resolve))
		for _, r := range resolve {
			from, addr, err := parseResolve(r)
			if err != nil {
				return nil, err
			}
			to[from] = addr
		}
		dial := tr.DialContext
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if a, ok := to[strings.ToLower(addr)]; ok {
				addr = a
			}
			return dial(ctx, network, addr)
		}
		// A proxy would be dialled instead of the address asked for.
		tr.Proxy = nil
	}
	return &http.Client{Timeout: timeout, Transport: tr}, nil
}

// parseResolve reads curl's HOST:PORT:ADDR and returns the dial address it
// replaces ("host:port", lower case) and the one to dial instead
// ("addr:port"). ADDR may be an IPv6 address in brackets.
func parseResolve(s string) (from, to string, err error) {
	bad := fmt.Errorf("--resolve %q: want HOST:PORT:ADDR, e.g. a.example.test:8443:10.231.0.1", s)
	host, rest, ok := strings.Cut(s, ":")
	if !ok || host == "" {
		return "", "", bad
	}
	port, addr, ok := strings.Cut(rest, ":")
	if !ok || addr == "" {
		return "", "", bad
	}
	if n, perr := strconv.Atoi(port); perr != nil || n < 1 || n > 65535 {
		return "", "", bad
	}
	addr = strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]")
	if net.ParseIP(addr) == nil {
		return "", "", fmt.Errorf("--resolve %q: %q is not an IP address", s, addr)
	}
	return net.JoinHostPort(strings.ToLower(host), port), net.JoinHostPort(addr, port), nil
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
