// Package keyfile loads the server's long-lived private keys (the Noise
// machine key and the embedded DERP server key), creating them on first
// start. The files hold "privkey:<hex>", the format Headscale writes, so an
// existing Headscale state directory keeps its identity. New key files are
// written with mode 0600; Loose tells the server which of its secret files
// (keys, database) other users may read, so it can warn at start.
package keyfile

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"tailscale.com/types/key"
)

// MachineKey loads or creates the Noise private key at path.
func MachineKey(path string) (key.MachinePrivate, error) {
	k := key.NewMachine()
	err := loadOrCreate(path, &k, &k)
	return k, err
}

// NodeKey loads or creates the DERP server private key at path.
func NodeKey(path string) (key.NodePrivate, error) {
	k := key.NewNode()
	err := loadOrCreate(path, &k, &k)
	return k, err
}

// CheckMachineKey reports what MachineKey would refuse, changing nothing:
// a file at path that cannot be read or holds no machine key. A missing
// file is fine (MachineKey creates it).
func CheckMachineKey(path string) error {
	var k key.MachinePrivate
	_, err := load(path, &k)
	return err
}

// CheckNodeKey is CheckMachineKey for the DERP server key NodeKey loads.
func CheckNodeKey(path string) error {
	var k key.NodePrivate
	_, err := load(path, &k)
	return err
}

// load reads the key at path into into; found is false (and err nil) when
// there is no file.
func load(path string, into encoding.TextUnmarshaler) (found bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading private key: %w", err)
	}
	if err := into.UnmarshalText(bytes.TrimSpace(b)); err != nil {
		return true, fmt.Errorf("reading private key %s: %w", path, err)
	}
	return true, nil
}

// loadOrCreate reads the key at path into into, or, when the file does not
// exist, writes out (a freshly generated key) there.
func loadOrCreate(path string, into encoding.TextUnmarshaler, out encoding.TextMarshaler) error {
	if found, err := load(path, into); found || err != nil {
		return err
	}
	text, err := out.MarshalText()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating key directory: %w", err)
	}
	tmp := path + ".tmp"
	// A stale temporary file would keep its own mode through WriteFile.
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("writing private key: %w", err)
	}
	if err := os.WriteFile(tmp, append(text, '\n'), PrivateMode); err != nil {
		return fmt.Errorf("writing private key: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing private key: %w", err)
	}
	return nil
}

// PrivateMode is the mode every file holding a secret should have.
const PrivateMode fs.FileMode = 0o600

// Loose reports the permission bits of the file at path and whether they
// let anyone but its owner in (any group or other bit set). A missing file
// is not loose and not an error: optional files (a -wal that SQLite has
// not created yet) need no special case. Symbolic links are followed, as
// opening the file would.
func Loose(path string) (perm fs.FileMode, loose bool, err error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("checking the mode of %s: %w", path, err)
	}
	perm = fi.Mode().Perm()
	return perm, perm&0o077 != 0, nil
}
