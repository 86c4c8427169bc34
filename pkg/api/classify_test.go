package api

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"

	"github.com/hsctl/headscale/pkg/store"
)

// TestClassify: each kind of error becomes its status; a database that
// cannot be reached is a 503 that says so, never a bare 500.
func TestClassify(t *testing.T) {
	refused := fmt.Errorf("create user: %w", &net.OpError{Op: "dial", Net: "unix", Err: syscall.ECONNREFUSED})
	for _, tc := range []struct {
		name   string
		err    error
		status int
		msg    string
	}{
		{"client mistake", bad("name is empty"), http.StatusBadRequest, "name is empty"},
		{"not found", fmt.Errorf("user 7: %w", store.ErrNotFound), http.StatusNotFound, "not found"},
		{"conflict", fmt.Errorf("x: %w", store.ErrConflict), http.StatusConflict, "already exists"},
		{"database refused the connection", refused, http.StatusServiceUnavailable, "the database is unavailable: nothing accepts connections"},
		{"database unavailable", fmt.Errorf("x: %w", store.ErrUnavailable), http.StatusServiceUnavailable, "the database is unavailable"},
		{"anything else", errors.New("boom"), http.StatusInternalServerError, "internal error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, msg := classify(tc.err)
			if status != tc.status || !strings.Contains(msg, tc.msg) {
				t.Fatalf("classify(%v) = %d %q, want %d with %q", tc.err, status, msg, tc.status, tc.msg)
			}
		})
	}
}
