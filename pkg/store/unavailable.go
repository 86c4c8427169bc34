package store

// Telling a database that cannot be reached (or refuses this server) from
// any other failure, and saying why in words an operator can act on.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrUnavailable reports that the database could not be reached or
// refused the connection: nothing was read or written, and the same call
// may succeed once it is back. Test for it with IsUnavailable, which also
// recognises the drivers' own connection errors.
var ErrUnavailable = errors.New("the database is unavailable")

// FailureClass names why a connection to PostgreSQL failed.
type FailureClass string

// The classes ClassifyConnect reports.
const (
	// FailUnreachable: nothing listens (connection refused, no socket
	// file, host or network unreachable), or the connection broke.
	FailUnreachable FailureClass = "unreachable"
	// FailDNS: the host name does not resolve.
	FailDNS FailureClass = "dns"
	// FailTimeout: no answer in time.
	FailTimeout FailureClass = "timeout"
	// FailStarting: the server is starting up, shutting down or in
	// recovery, or has no connection slot left.
	FailStarting FailureClass = "starting"
	// FailAuth: the password (or other authentication) was refused, or
	// pg_hba.conf has no entry for this connection.
	FailAuth FailureClass = "authentication"
	// FailNoDatabase: the database does not exist.
	FailNoDatabase FailureClass = "unknown_database"
	// FailNoRole: the role (user) does not exist.
	FailNoRole FailureClass = "unknown_role"
	// FailTLS: TLS is required by one side and refused by the other, or
	// the server's certificate did not verify.
	FailTLS FailureClass = "tls"
)

// ClassifyConnect tells whether err means that PostgreSQL could not be
// reached or refused the connection, and why: the class and one sentence
// for an operator. An error of any other kind (a query, a migration, a
// database of another program) gives "".
func ClassifyConnect(err error) (FailureClass, string) {
	if err == nil {
		return "", ""
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return classifyPgError(pe)
	}
	var (
		dnsErr   *net.DNSError
		certErr  *tls.CertificateVerificationError
		authErr  x509.UnknownAuthorityError
		hostErr  x509.HostnameError
		invalErr x509.CertificateInvalidError
		recErr   tls.RecordHeaderError
	)
	msg := err.Error()
	switch {
	case errors.As(err, &certErr), errors.As(err, &authErr), errors.As(err, &hostErr), errors.As(err, &invalErr):
		return FailTLS, "the server's TLS certificate did not verify (database.postgres.ssl verify-ca/verify-full needs the server's CA and host name to match): " + lastPart(msg)
	case strings.Contains(msg, "server refused TLS connection"):
		return FailTLS, "the server does not accept TLS but database.postgres.ssl requires it: enable ssl on the server or lower database.postgres.ssl"
	case errors.As(err, &recErr), strings.Contains(msg, "tls: "):
		return FailTLS, "the TLS handshake failed: " + lastPart(msg)
	case errors.As(err, &dnsErr):
		return FailDNS, "the host name does not resolve: " + lastPart(msg)
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
		return FailUnreachable, "nothing accepts connections there (connection refused or no socket file): is PostgreSQL running?"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return FailUnreachable, "the host cannot be reached (no route to it)"
	case pgconn.Timeout(err), errors.Is(err, context.DeadlineExceeded), isNetTimeout(err):
		return FailTimeout, "no answer in time (the host is down or a firewall drops the packets)"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, pgconn.ErrConnClosed), errors.Is(err, driver.ErrBadConn):
		return FailUnreachable, "the connection was closed by the server or the network"
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	if errors.As(err, &ce) || errors.As(err, &ne) {
		return FailUnreachable, "cannot connect: " + lastPart(msg)
	}
	return "", ""
}

// classifyPgError is ClassifyConnect for an error PostgreSQL sent.
func classifyPgError(pe *pgconn.PgError) (FailureClass, string) {
	switch {
	case pe.Code == "28P01":
		return FailAuth, "password authentication failed: check database.postgres.pass (or pass_file) and the role's password"
	case pe.Code == "28000" && strings.Contains(pe.Message, "does not exist"):
		return FailNoRole, "the role does not exist: create it (createuser) or fix database.postgres.user"
	case pe.Code == "28000" && strings.Contains(pe.Message, "no encryption"):
		return FailTLS, "the server requires TLS for this connection (pg_hba.conf hostssl) but database.postgres.ssl is off"
	case pe.Code == "28000" && strings.Contains(pe.Message, "pg_hba.conf"):
		return FailAuth, "pg_hba.conf has no entry allowing this host, user and database: " + pe.Message
	case strings.HasPrefix(pe.Code, "28"):
		return FailAuth, "authentication failed: " + pe.Message
	case pe.Code == "3D000":
		return FailNoDatabase, "the database does not exist: create it (createdb -O <user> <name>) or fix database.postgres.name"
	case pe.Code == "57P03", pe.Code == "57P01", pe.Code == "57P02":
		return FailStarting, "PostgreSQL is starting up, shutting down or in recovery: " + pe.Message
	case pe.Code == "53300":
		return FailStarting, "PostgreSQL has no connection slot left (max_connections): " + pe.Message
	case strings.HasPrefix(pe.Code, "08"):
		return FailUnreachable, "the connection failed: " + pe.Message
	}
	return "", ""
}

func isNetTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// lastPart is the innermost part of a chain of "context: cause" messages,
// the part that says what happened.
func lastPart(msg string) string {
	if i := strings.LastIndex(msg, ": "); i >= 0 && i+2 < len(msg) {
		return msg[i+2:]
	}
	return msg
}

// IsUnavailable reports whether err means the database could not be
// reached or refused the connection (ErrUnavailable, or a driver error
// ClassifyConnect recognises): the operation did nothing and may succeed
// once the database is back.
func IsUnavailable(err error) bool {
	if errors.Is(err, ErrUnavailable) {
		return true
	}
	class, _ := ClassifyConnect(err)
	return class != ""
}

// Unavailable is err as ErrUnavailable with the reason in words
// ("the database is unavailable: nothing accepts connections there ...")
// when IsUnavailable(err), else err unchanged.
func Unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	_, why := ClassifyConnect(err)
	if why == "" {
		return err
	}
	return &kindError{msg: fmt.Sprintf("%v: %s", ErrUnavailable, why), kind: ErrUnavailable}
}
