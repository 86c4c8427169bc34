package crashtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Server is one headscale server binary run on loopback with its state in
// a directory of its own, started and killed as the caller says.
type Server struct {
	// Bin is the headscale binary; Config its configuration file; DB the
	// SQLite database file; URL the server's base URL.
	Bin, Config, DB, URL string
	// Log is the file the server's output is appended to.
	Log string

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// NewServer writes a configuration for a server with its state under dir,
// listening on a free loopback port, and returns the (stopped) server.
// db, when not "", puts the database elsewhere than state/db.sqlite;
// extra is appended to the YAML (more top-level keys).
func NewServer(bin, dir, db, extra string) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	s := &Server{
		Bin:    bin,
		Config: filepath.Join(dir, "config.yaml"),
		DB:     filepath.Join(dir, "state", "db.sqlite"),
		URL:    fmt.Sprintf("http://127.0.0.1:%d", port),
		Log:    filepath.Join(dir, "server.log"),
	}
	if db != "" {
		s.DB = db
	}
	yaml := fmt.Sprintf(`server_url: %s
listen_addr: 127.0.0.1:%d
metrics_listen_addr: ""
state_dir: %s
unix_socket: %s
log:
  level: warn
derp:
  server:
    stun_listen_addr: 127.0.0.1:0
database:
  sqlite:
    path: %s
%s`, s.URL, port, filepath.Join(dir, "state"), filepath.Join(dir, "hs.sock"), s.DB, extra)
	if err := os.WriteFile(s.Config, []byte(yaml), 0o600); err != nil {
		return nil, err
	}
	return s, nil
}

// freePort finds a loopback TCP port nothing listens on now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start starts the server process (it must not be running). The process
// is killed if this process dies.
func (s *Server) Start() error {
	if s.cmd != nil {
		return errors.New("server already running")
	}
	logf, err := os.OpenFile(s.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(s.Bin, "-c", s.Config, "serve")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "HEADSCALE_CONFIG="+s.Config)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", s.Bin, err)
	}
	s.cmd, s.done, s.err = cmd, make(chan struct{}), nil
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()
	return nil
}

// PID is the running server's process ID, 0 when stopped.
func (s *Server) PID() int {
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// WaitReady polls /health until it answers 200, the process exits or
// timeout passes.
func (s *Server) WaitReady(ctx context.Context, timeout time.Duration) error {
	if s.cmd == nil {
		return errors.New("server not running")
	}
	deadline := time.Now().Add(timeout)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", s.URL+"/health", nil)
		if res, err := hc.Do(req); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.done:
			return fmt.Errorf("server exited while starting (%v): %s", s.err, s.LogTail(2000))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server not ready after %v: %s", timeout, s.LogTail(2000))
		}
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
	s.cmd = nil
}

// Stop sends SIGTERM and waits up to timeout for a clean exit, then kills.
func (s *Server) Stop(timeout time.Duration) error {
	if s.cmd == nil {
		return nil
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(timeout):
		s.Kill()
		return fmt.Errorf("server did not stop within %v", timeout)
	}
	s.cmd = nil
	return s.err
}

// Exited reports whether the process has ended on its own.
func (s *Server) Exited() bool {
	if s.cmd == nil {
		return true
	}
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// CLI runs the headscale CLI with the server's configuration and returns
// its standard output.
func (s *Server) CLI(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.Bin, append([]string{"-c", s.Config}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("headscale %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// LogTail is the end of the server's log, at most n bytes.
func (s *Server) LogTail(n int) string {
	b, err := os.ReadFile(s.Log)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
