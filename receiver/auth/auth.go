// Package auth checks the two credentials of a Sync Appointments request
// (architecture.md, "The request's path"): the X-API-Key header and the X-Webhook-Signature HMAC of the
// raw body. Every comparison is constant-time and every check fails closed:
// an empty configured key or secret matches nothing.
package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"strings"
)

// MinCredentialBytes is the least length of an API key or webhook secret
// the receiver starts with (after the trailing newline it drops); the
// operator refuses shorter ones in the Secret too (v1alpha1, the same
// number), but the kubelet hands a running pod the Secret's new files all
// the same, so a receiver restarted after such a rotation must refuse them
// itself. `openssl rand -hex 32` gives 64.
const MinCredentialBytes = 32

// SignaturePrefix starts every X-Webhook-Signature value.
const SignaturePrefix = "sha256="

// ErrSignatureFormat is a signature header that is not sha256=<64 hex>.
var ErrSignatureFormat = errors.New("signature must be sha256=<64 hex digits>")

// KeyMatches reports whether the API key a request presented equals one of
// the configured ones (the current and, during a rotation, the previous).
// Empty configured keys are ignored. Keys are hashed first so that the
// comparison takes the same time whatever their lengths.
func KeyMatches(presented string, configured ...string) bool {
	p := sha256.Sum256([]byte(presented))
	ok := 0
	for _, k := range configured {
		if k == "" {
			continue
		}
		c := sha256.Sum256([]byte(k))
		// No early return: the time taken does not say which key matched.
		ok |= subtle.ConstantTimeCompare(p[:], c[:])
	}
	return ok == 1
}

// ParseSignature decodes an X-Webhook-Signature value: the lower-case
// prefix "sha256=" then 64 hex digits of either case, nothing else
// (surrounding white space aside).
func ParseSignature(header string) ([]byte, error) {
	h := strings.TrimSpace(header)
	hexPart, ok := strings.CutPrefix(h, SignaturePrefix)
	if !ok || len(hexPart) != 2*sha256.Size {
		return nil, ErrSignatureFormat
	}
	mac, err := hex.DecodeString(hexPart)
	if err != nil {
		return nil, ErrSignatureFormat
	}
	return mac, nil
}

// Verify reports whether header carries HMAC-SHA256(secret, body) for one
// of secrets (the current and, during rotation, the previous). Empty secrets
// are ignored; with no non-empty secret nothing verifies.
func Verify(body []byte, header string, secrets ...[]byte) bool {
	got, err := ParseSignature(header)
	if err != nil {
		return false
	}
	ok := false
	for _, s := range secrets {
		if len(s) == 0 {
			continue
		}
		// No early return: the time taken does not say which secret matched.
		if hmac.Equal(got, mac(s, body)) {
			ok = true
		}
	}
	return ok
}

// Sign returns the X-Webhook-Signature value for body: "sha256=" and the
// lower-case hex HMAC-SHA256 of body under secret.
func Sign(secret, body []byte) string {
	return SignaturePrefix + hex.EncodeToString(mac(secret, body))
}

func mac(secret, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return m.Sum(nil)
}
