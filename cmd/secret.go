package cmd

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/insighthealth/ehr-operator/receiver/auth"
)

// secretFlag is a secret given either as --NAME or as a file, --NAME-file
// (a mounted Secret key, kept out of the process list). Both fall back to
// their environment variables like every flag.
type secretFlag struct {
	name, value, file string
}

// addSecretFlag registers --name and --name-file on fs; noun names the
// secret in the help text.
func addSecretFlag(fs *pflag.FlagSet, name, usage, noun string) *secretFlag {
	s := &secretFlag{name: name}
	fs.StringVar(&s.value, name, "", usage)
	fs.StringVar(&s.file, name+"-file", "", fmt.Sprintf("file holding %s (instead of --%s)", noun, name))
	return s
}

// get returns the secret; its errors name the flags, never the value.
func (s *secretFlag) get() (string, error) {
	switch {
	case s.value != "" && s.file != "":
		return "", fmt.Errorf("set only one of %s and %s", flagAndEnv(s.name), flagAndEnv(s.name+"-file"))
	case s.file != "":
		return readCredential(s.file)
	case s.value == "":
		return "", fmt.Errorf("%s or %s is required", flagAndEnv(s.name), flagAndEnv(s.name+"-file"))
	}
	return s.value, nil
}

// flagAndEnv names a flag and its environment variable: "--api-key (API_KEY)".
func flagAndEnv(flag string) string {
	return fmt.Sprintf("--%s (%s)", flag, envName(flag))
}

var errEmptyCredential = errors.New("is empty")

// readCredential reads a secret file (a mounted Secret key), dropping the
// trailing newline an editor or `echo` adds.
func readCredential(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("while reading %s: %w", path, err)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("%s: %w", path, errEmptyCredential)
	}
	return s, nil
}

// credentialLength refuses an API key or webhook secret shorter than
// auth.MinCredentialBytes; the error names the file, never the value or
// its length.
func credentialLength(path, v string) error {
	if len(v) < auth.MinCredentialBytes {
		return fmt.Errorf("%s: shorter than %d bytes; use a random one, e.g. `openssl rand -hex 32`", path, auth.MinCredentialBytes)
	}
	return nil
}
