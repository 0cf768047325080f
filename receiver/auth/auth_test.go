package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"testing"
)

func TestKeyMatches(t *testing.T) {
	for _, tc := range []struct {
		presented, configured string
		want                  bool
	}{
		{"k-123", "k-123", true},
		{"k-124", "k-123", false},
		{"k-12", "k-123", false},
		{"K-123", "k-123", false},
		{"", "k-123", false},
		{"", "", false}, // fail closed
		{"anything", "", false},
	} {
		if got := KeyMatches(tc.presented, tc.configured); got != tc.want {
			t.Errorf("KeyMatches(%q, %q) = %v, want %v", tc.presented, tc.configured, got, tc.want)
		}
	}
	// During a rotation either key matches; an empty previous one matches nothing.
	for _, tc := range []struct {
		presented string
		want      bool
	}{{"k-new", true}, {"k-old", true}, {"k-other", false}, {"", false}} {
		if got := KeyMatches(tc.presented, "k-new", "k-old"); got != tc.want {
			t.Errorf("KeyMatches(%q, new, old) = %v, want %v", tc.presented, got, tc.want)
		}
		if got := KeyMatches(tc.presented, "k-new", ""); got != (tc.presented == "k-new") {
			t.Errorf("KeyMatches(%q, new, \"\") = %v", tc.presented, got)
		}
	}
	if KeyMatches("") || KeyMatches("x", "", "") {
		t.Error("no configured key matched something")
	}
}

func TestParseSignature(t *testing.T) {
	hex64 := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		header string
		ok     bool
	}{
		{"sha256=" + hex64, true},
		{"sha256=" + strings.ToUpper(hex64), true},
		{" sha256=" + hex64 + " ", true},
		{"SHA256=" + hex64, false},
		{"sha1=" + hex64, false},
		{hex64, false},
		{"sha256=" + hex64[:62], false},
		{"sha256=" + hex64 + "ab", false},
		{"sha256=" + hex64[:63] + "g", false},
		{"sha256= " + hex64[:63], false},
		{"", false},
		{"sha256=", false},
	} {
		mac, err := ParseSignature(tc.header)
		if (err == nil) != tc.ok {
			t.Errorf("ParseSignature(%q) error = %v, want ok %v", tc.header, err, tc.ok)
		}
		if tc.ok && !bytes.Equal(mac, bytes.Repeat([]byte{0xab}, 32)) {
			t.Errorf("ParseSignature(%q) = %x", tc.header, mac)
		}
	}
}

func TestSignAndVerify(t *testing.T) {
	body := []byte(`{"appointments":[]}`)
	cur, prev := []byte("current-secret"), []byte("previous-secret")
	// Known answer, as `openssl dgst -sha256 -hmac current-secret` prints it.
	m := hmac.New(sha256.New, cur)
	m.Write(body)
	if want := "sha256=" + hex.EncodeToString(m.Sum(nil)); Sign(cur, body) != want {
		t.Fatalf("Sign = %s, want %s", Sign(cur, body), want)
	}
	for _, tc := range []struct {
		name    string
		header  string
		body    []byte
		secrets [][]byte
		want    bool
	}{
		{"current", Sign(cur, body), body, [][]byte{cur, prev}, true},
		{"previous during rotation", Sign(prev, body), body, [][]byte{cur, prev}, true},
		{"upper-case hex", "sha256=" + strings.ToUpper(Sign(cur, body)[7:]), body, [][]byte{cur}, true},
		{"previous after rotation", Sign(prev, body), body, [][]byte{cur, nil}, false},
		{"other secret", Sign([]byte("x"), body), body, [][]byte{cur, prev}, false},
		{"body changed", Sign(cur, body), append([]byte(" "), body...), [][]byte{cur}, false},
		{"empty secret never verifies", Sign(nil, body), body, [][]byte{nil, {}}, false},
		{"no secrets", Sign(cur, body), body, nil, false},
		{"malformed header", "sha256=zz", body, [][]byte{cur}, false},
	} {
		if got := Verify(tc.body, tc.header, tc.secrets...); got != tc.want {
			t.Errorf("%s: Verify = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// FuzzParseSignature: never panics; whatever parses is 32 bytes and
// re-encodes to the header it came from (modulo hex case and white space).
func FuzzParseSignature(f *testing.F) {
	f.Add("sha256=" + strings.Repeat("0f", 32))
	f.Add("sha256=" + strings.Repeat("AB", 32))
	f.Add("sha256=")
	f.Add("")
	f.Fuzz(func(t *testing.T, header string) {
		mac, err := ParseSignature(header)
		if err != nil {
			return
		}
		if len(mac) != sha256.Size {
			t.Fatalf("%d bytes", len(mac))
		}
		if got := SignaturePrefix + hex.EncodeToString(mac); !strings.EqualFold(got, strings.TrimSpace(header)) {
			t.Fatalf("re-encoded %q from %q", got, header)
		}
	})
}

// The worked example of docs/webhook-api.md signs the spec's example with
// make run's development secret (hack/devrun): the signature it prints must
// be the one Sign makes, and the secret the one make run uses.
func TestWorkedExampleInTheDocs(t *testing.T) {
	doc, err := os.ReadFile("../../docs/webhook-api.md")
	if err != nil {
		t.Fatal(err)
	}
	devrun, err := os.ReadFile("../../hack/devrun/main.go")
	if err != nil {
		t.Fatal(err)
	}
	body, secret, printed := "", "", ""
	for line := range strings.Lines(string(doc)) {
		line = strings.TrimRight(line, "\n")
		switch {
		case body == "" && strings.HasPrefix(line, `{ "appointments": [ { "appointment": { "id": "apt-12345"`):
			body = line + "\n" // "one line, ending in a newline"
		case strings.HasPrefix(line, "$ openssl dgst -sha256 -hmac "):
			secret = strings.Fields(line)[5]
		case strings.HasPrefix(line, "SHA2-256(stdin)= "):
			printed = strings.TrimPrefix(line, "SHA2-256(stdin)= ")
		}
	}
	if body == "" || secret == "" || printed == "" {
		t.Fatalf("worked example not found: body %t, secret %q, signature %q", body != "", secret, printed)
	}
	if got := Sign([]byte(secret), []byte(body)); got != SignaturePrefix+printed {
		t.Errorf("Sign = %s, the docs print %s", got, printed)
	}
	if !strings.Contains(string(doc), "X-Webhook-Signature: sha256="+printed) {
		t.Errorf("the docs' header does not carry the signature they print")
	}
	if !strings.Contains(string(devrun), `secret = "`+secret+`"`) {
		t.Errorf("hack/devrun does not sign with %q, the docs' development secret", secret)
	}
	if len(secret) < MinCredentialBytes {
		t.Errorf("the development secret is shorter than %d bytes: the receiver would refuse it", MinCredentialBytes)
	}
}
