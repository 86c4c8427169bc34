// Package keyfile loads the server's long-lived private keys (the Noise
// machine key and the embedded DERP server key), creating them on first
// start. The files hold "privkey:<hex>", the format Headscale writes, so an
// existing Headscale state directory keeps its identity.
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

// loadOrCreate reads the key at path into into, or, when the file does not
// exist, writes out (a freshly generated key) there.
func loadOrCreate(path string, into encoding.TextUnmarshaler, out encoding.TextMarshaler) error {
	b, err := os.ReadFile(path)
	if err == nil {
		if err := into.UnmarshalText(bytes.TrimSpace(b)); err != nil {
			return fmt.Errorf("reading private key %s: %w", path, err)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("reading private key: %w", err)
	}
	text, err := out.MarshalText()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating key directory: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(text, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing private key: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing private key: %w", err)
	}
	return nil
}
