package store

import (
	"context"
	"crypto/x509"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/lib/pq"
	"github.com/lib/pq/pqerror"
)

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("store is closed")

// ErrReadOnly: the database answers but takes no writes (Ping): a standby
// behind the URL (a failover under way, or the URL of a replica), or a
// server set read-only (managed services do so when its disk is full). An
// outage, not a refusal: it ends when the URL leads to a writable primary
// again, and meanwhile writes fail with SQLSTATE 25006, answered 503.
var ErrReadOnly = errors.New("the database is read-only: a standby, or a server set read-only; the receiver needs the writable primary")

// IsUnavailable reports whether err means the database could not be reached,
// is shutting down or starting, or did not answer in time: the request may
// be retried later and deserves a 503. Anything else is unexpected (500).
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	for _, target := range []error{
		ErrClosed, ErrReadOnly, ErrOutcomeUnknown, ErrRowHeld, driver.ErrBadConn, sql.ErrConnDone, context.DeadlineExceeded,
		io.EOF, io.ErrUnexpectedEOF,
		syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.EPIPE, syscall.ETIMEDOUT, syscall.EHOSTUNREACH, syscall.ENETUNREACH,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	if pqErr := pq.As(err); pqErr != nil {
		return unavailableCode(pqErr.Code)
	}
	return false
}

// IsRefused reports whether err says the database refuses this receiver's
// settings rather than being away: its credentials (SQLSTATE class 28), a
// database that does not exist (3D000), a role without a privilege it
// needs (42501), a server certificate that does not verify, a server
// without the TLS the URL requires (sslmode=require or stricter). Retrying does
// not help; a fixed URL or grant does. A host name DNS does not know is
// not among them: a headless Service whose pods are all down answers so
// too (NXDOMAIN), which is an outage.
func IsRefused(err error) bool {
	if err == nil {
		return false
	}
	if pqErr := pq.As(err); pqErr != nil {
		return pqErr.Code.Class() == "28" || pqErr.Code == "3D000" || pqErr.Code == "42501" || poolerRefusal(pqErr) != ""
	}
	return tlsCause(err) != "" || errors.Is(err, ErrTransactionPooling)
}

// poolerRefusals are the messages with which PgBouncer refuses a
// connection's settings, and what each means. It sends them all with
// SQLSTATE 08P01 (protocol_violation), also a wrong password (measured,
// PgBouncer 1.18), the code it also gives a server it cannot reach or a
// client that waited too long for one (an outage): the message tells them
// apart. PostgreSQL sends none of them.
var poolerRefusals = []struct{ prefix, cause string }{
	{"unsupported startup parameter", "the pooler refuses a startup parameter of the URL (PgBouncer: ignore_startup_parameters)"},
	{"no such database", "the pooler does not know the database"},
	{"no such user", "the pooler does not know the user"},
	{"password authentication failed", "the pooler refuses the credentials"},
	{"SASL authentication failed", "the pooler refuses the credentials"},
	{`"trust" authentication failed`, "the pooler refuses the credentials"},
}

// poolerRefusal is the cause of a pooler's refusal of the receiver's
// settings, "" for any other error.
func poolerRefusal(pqErr *pq.Error) string {
	if pqErr.Code != "08P01" {
		return ""
	}
	for _, r := range poolerRefusals {
		if strings.HasPrefix(pqErr.Message, r.prefix) {
			return r.cause
		}
	}
	return ""
}

// tlsCause names a TLS setting the server refuses (a certificate that
// does not verify, no TLS where the URL's sslmode requires it), "" for any
// other error.
func tlsCause(err error) string {
	var (
		unknownAuthority x509.UnknownAuthorityError
		invalid          x509.CertificateInvalidError
		hostname         x509.HostnameError
	)
	switch {
	case errors.Is(err, pq.ErrSSLNotSupported):
		return "the server does not offer TLS, which the URL's sslmode requires"
	case errors.As(err, &unknownAuthority):
		return "the server's certificate is not signed by a trusted CA"
	case errors.As(err, &hostname):
		return "the server's certificate does not name the host"
	case errors.As(err, &invalid):
		return "the server's certificate is not valid (expired?)"
	}
	return ""
}

func unavailableCode(code pqerror.Code) bool {
	switch code.Class() {
	case "08", // connection exception
		"53": // insufficient resources: too many connections, out of memory, disk full
		return true
	}
	switch code {
	case "57P01", "57P02", "57P03", // admin shutdown, crash shutdown, cannot connect now
		"57014",          // query canceled: statement_timeout or our own deadline
		"25006",          // read-only transaction: a standby, or a server set read-only (ErrReadOnly)
		"40001", "40P01", // serialization failure, deadlock: still so after our retries
		"55P03": // lock not available: a wait for a row outlasted lock_timeout (the sessions' 2 s, or a DBA's)
		return true
	}
	return false
}

// retryable errors are worth running the same transaction again at once:
// the other transaction has gone or will soon. Not a lock timeout
// (55P03), answered 503 instead: the write gave up its place in the row's
// queue, and run again at once it would queue behind a newer version of
// the same appointment that came meanwhile and commit after it, undoing
// it (TestLockTimeoutDoesNotUndoANewerVersion). The vendor's retry is
// ordered: its first receipt is remembered (docs/decisions.md, "Order
// under retries").
func retryable(err error) bool {
	return pq.As(err, "40001", "40P01") != nil
}

// dbError wraps a database error in a message free of field values:
// PostgreSQL messages can quote the offending value (`invalid input syntax
// for type date: "…"`), so only the operation, the SQLSTATE and the names of
// the schema objects involved are shown. The original stays reachable
// through Unwrap for IsUnavailable and errors.As.
type dbError struct {
	op  string
	err error
}

func (e *dbError) Error() string {
	if pqErr := pq.As(e.err); pqErr != nil {
		s := fmt.Sprintf("%s: postgres error %s (%s)", e.op, pqErr.Code, pqErr.Code.Name())
		if pqErr.Code.Class() == "42" {
			// Syntax and access-rule errors name only our own SQL's objects.
			s += ": " + pqErr.Message
		}
		if pqErr.Table != "" {
			s += " table " + pqErr.Table
		}
		if pqErr.Column != "" {
			s += " column " + pqErr.Column
		}
		if pqErr.Constraint != "" {
			s += " constraint " + pqErr.Constraint
		}
		return s
	}
	// Driver and network errors carry addresses and states, not rows.
	return e.op + ": " + e.err.Error()
}

func (e *dbError) Unwrap() error { return e.err }

func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return &dbError{op: op, err: err}
}

// Cause names why the database failed a ping or write in a few words that
// hold no URL, host, user or value: the SQLSTATE and its name, or the kind
// of network or TLS failure; "" when err is nil or of no kind known here
// (the receiver's log has the whole error). The receivers report it in
// GET /dbz, and the operator shows it in DatabaseReachable, so an SRE sees
// a wrong password as such without reading pod logs.
func Cause(err error) string {
	if err == nil {
		return ""
	}
	if pqErr := pq.As(err); pqErr != nil {
		if c := poolerRefusal(pqErr); c != "" {
			return "SQLSTATE " + string(pqErr.Code) + ": " + c
		}
		if name := pqErr.Code.Name(); name != "" {
			return "SQLSTATE " + string(pqErr.Code) + " (" + name + ")"
		}
		return "SQLSTATE " + string(pqErr.Code)
	}
	if c := tlsCause(err); c != "" {
		return c
	}
	var (
		dnsErr *net.DNSError
		netErr net.Error
	)
	switch {
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return "the host name does not resolve"
	case errors.As(err, &dnsErr):
		return "the DNS lookup of the host failed"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "no route to the host"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT),
		errors.As(err, &netErr) && netErr.Timeout():
		return "no answer in time"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, driver.ErrBadConn), errors.Is(err, syscall.EPIPE):
		return "the connection was closed"
	case errors.Is(err, ErrClosed):
		return "the receiver is shutting down"
	case errors.Is(err, ErrTransactionPooling):
		return "a pooler in transaction mode: the receiver needs session mode"
	case errors.Is(err, ErrReadOnly):
		return "the database is read-only (a standby, or set read-only): the receiver needs the writable primary"
	}
	return ""
}
