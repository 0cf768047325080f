package cmd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/insighthealth/ehr-operator/receiver/auth"
)

type sendFlags struct {
	url, ehr, requestID string
	apiKey, secret      *secretFlag
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

Every flag falls back to an environment variable named after it
(--api-key → API_KEY, --secret-file → SECRET_FILE, …).`,
		Example: `  ehr-operator send --url http://127.0.0.1:8080 --ehr nexus \
      --api-key-file creds/api-key --secret-file creds/webhook-secret example.json
  ehr-operator send --dry-run --url https://nexus.webhooks.example.com/v2/webhooks/nexus/sync-appointments \
      --api-key "$KEY" --secret "$SECRET" example.json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := bindEnv(c.Flags()); err != nil {
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

	if f.dryRun {
		data := "@" + file
		if file == "-" {
			data = "@- < FILE  # the same bytes that were signed"
		}
		fmt.Fprintf(out, "X-Webhook-Signature: %s\n\n", sig)
		fmt.Fprintf(out, "curl -sS -X POST %s \\\n  -H 'Content-Type: application/json' \\\n  -H %s \\\n  -H %s \\\n",
			shellQuote(endpoint), shellQuote("X-API-Key: "+key), shellQuote("X-Webhook-Signature: "+sig))
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
	resp, err := (&http.Client{Timeout: f.timeout}).Do(req)
	if err != nil {
		return fmt.Errorf("while sending to %s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20)) // display only
	if err != nil {
		return fmt.Errorf("while reading the answer: %w", err)
	}
	fmt.Fprintf(out, "%s %s (X-Request-ID %s)\n%s\n", resp.Proto, resp.Status, resp.Header.Get("X-Request-ID"),
		strings.TrimRight(string(answer), "\n"))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		if ra := resp.Header.Get("Retry-After"); ra != "" {
			return fmt.Errorf("the receiver answered %d; retry after %s s", resp.StatusCode, ra)
		}
		return fmt.Errorf("the receiver answered %d", resp.StatusCode)
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

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
