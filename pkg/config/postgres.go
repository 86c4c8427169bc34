package config

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// credentialsDirVar is the variable systemd sets, in a service given
// credentials with LoadCredential= or SetCredential=, to the directory
// holding them.
const credentialsDirVar = "CREDENTIALS_DIRECTORY"

// credentialPrefixes are the spellings of a pass_file that starts in the
// credentials directory.
var credentialPrefixes = [...]string{"$" + credentialsDirVar + "/", "${" + credentialsDirVar + "}/"}

// maxPassFile bounds what Password reads: a password file is one line.
const maxPassFile = 4096

// expandCredentials resolves a pass_file starting with
// $CREDENTIALS_DIRECTORY/ (or ${CREDENTIALS_DIRECTORY}/) against env. It
// returns the path unchanged, and named true, when the file names the
// directory; set tells whether env sets it.
func expandCredentials(path string, env map[string]string) (out string, named, set bool) {
	for _, p := range credentialPrefixes {
		rest, ok := strings.CutPrefix(path, p)
		if !ok {
			continue
		}
		dir := env[credentialsDirVar]
		if dir == "" {
			return path, true, false
		}
		return filepath.Join(dir, rest), true, true
	}
	return path, false, false
}

// Password returns the password to send: Pass, or the first line of
// PassFile (one trailing newline dropped). Its errors name the file and
// never carry its content.
func (p PostgresConfig) Password() (string, error) {
	if p.PassFile == "" {
		return p.Pass, nil
	}
	return readSecretFile("password", p.PassFile)
}

// readSecretFile reads a one-line secret (what names it in errors) from
// path, as validateSecretFile left it: one trailing newline dropped. Its
// errors name the file and never carry its content.
func readSecretFile(what, path string) (string, error) {
	if _, named, _ := expandCredentials(path, nil); named {
		return "", fmt.Errorf("reading the %s file %s: $%s is not set (systemd sets it for a service given the file with LoadCredential=)",
			what, path, credentialsDirVar)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading the %s file: %w", what, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPassFile+1))
	if err != nil {
		return "", fmt.Errorf("reading the %s file %s: %w", what, path, err)
	}
	if len(b) > maxPassFile {
		return "", fmt.Errorf("the %s file %s is larger than %d bytes; it must hold the %s alone", what, path, maxPassFile, what)
	}
	secret := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	switch {
	case secret == "":
		return "", fmt.Errorf("the %s file %s is empty", what, path)
	case strings.ContainsAny(secret, "\r\n\x00"):
		return "", fmt.Errorf("the %s file %s holds more than one line; it must hold the %s alone", what, path, what)
	}
	return secret, nil
}

// ConnString returns URL when it is set, else the libpq keyword/value
// connection string for p, which pgx (pgx.ParseConfig,
// pgxpool.ParseConfig) and libpq both accept:
// host (a unix-socket directory when it starts with "/"), port, dbname,
// user (left out when empty, so the driver uses the operating-system
// user), password (from Password; left out when empty) and sslmode.
// Values are quoted as libpq requires. The pool settings are not part of
// it (MaxOpenConns and the others are for the caller's pool).
//
// The result holds the password: never log it or put it in an error; log
// String instead.
func (p PostgresConfig) ConnString() (string, error) {
	if p.URL != "" {
		return p.URL, nil
	}
	pw, err := p.Password()
	if err != nil {
		return "", err
	}
	return p.connString(pw), nil
}

// connString writes the connection string with password pw ("" for
// none).
func (p PostgresConfig) connString(pw string) string {
	var b strings.Builder
	add := func(key, value string) {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(key)
		b.WriteByte('=')
		b.WriteString(connValue(value))
	}
	add("host", p.Host)
	add("port", strconv.Itoa(p.Port))
	add("dbname", p.Name)
	if p.User != "" {
		add("user", p.User)
	}
	if pw != "" {
		add("password", pw)
	}
	add("sslmode", p.SSL)
	return b.String()
}

// connValue quotes a connection string value when libpq needs it: an
// empty value, or one holding white space, a quote or a backslash, goes
// in single quotes with quotes and backslashes escaped.
func connValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r\v\f'\\") {
		return v
	}
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	return "'" + r.Replace(v) + "'"
}

// String describes the connection for logs and messages, without the
// password: "host=/var/run/postgresql port=5432 dbname=headscale
// user=headscale sslmode=disable" (user left out when empty, as in
// ConnString); with URL set, the URL without its password.
func (p PostgresConfig) String() string {
	if p.URL != "" {
		return redactURL(p.URL)
	}
	return p.connString("")
}

// GoString is String, so that %#v does not print the password either.
func (p PostgresConfig) GoString() string {
	return "config.PostgresConfig{" + p.String() + "}"
}

// LogValue is String, so that slog does not log the password.
func (p PostgresConfig) LogValue() slog.Value {
	return slog.StringValue(p.String())
}

// MarshalText is String, so that encoding/json (and slog's JSON handler,
// which uses it) shows the connection without the password.
func (p PostgresConfig) MarshalText() ([]byte, error) {
	return []byte(p.String()), nil
}

// ConnMaxIdleTime is ConnMaxIdleTimeSecs as a duration (0: no limit).
func (p PostgresConfig) ConnMaxIdleTime() time.Duration {
	return time.Duration(p.ConnMaxIdleTimeSecs) * time.Second
}
