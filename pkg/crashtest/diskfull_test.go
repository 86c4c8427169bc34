package crashtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/store"
)

// The disk-full test runs in a re-executed copy of the test binary inside
// its own mount namespace, so the small filesystem it mounts is gone with
// it whatever happens.
const (
	diskFullEnv    = "HS_CRASHTEST_DISKFULL_INNER"
	diskFullBinEnv = "HS_CRASHTEST_HEADSCALE"
)

// TestDiskFull puts the database on an 8 MiB tmpfs, fills it while the
// server takes registrations and admin writes, and checks that writes are
// refused with an error that says the disk is full (API 507, registration
// 503), that nothing acknowledged is lost, that the server keeps serving,
// and that writes succeed again once space is freed; then a kill -9 and a
// restart lose nothing either.
func TestDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a server binary on a small filesystem")
	}
	if os.Getenv(diskFullEnv) == "" {
		if os.Geteuid() != 0 {
			t.Skip("needs root to mount a small tmpfs (in a private mount namespace)")
		}
		bin := buildHeadscale(t)
		cmd := exec.Command(os.Args[0], "-test.run=^TestDiskFull$", "-test.count=1", "-test.v", "-test.timeout=10m")
		cmd.Env = append(os.Environ(), diskFullEnv+"=1", diskFullBinEnv+"="+bin)
		cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
		out, err := cmd.CombinedOutput()
		t.Logf("inside a private mount namespace:\n%s", out)
		var ee *exec.ExitError
		switch {
		case err != nil && !errors.As(err, &ee):
			t.Skipf("cannot start a process in a new mount namespace: %v", err)
		case strings.Contains(string(out), "--- SKIP: TestDiskFull"):
			t.Skip("skipped inside the namespace (see the log)")
		case err != nil:
			t.Fatalf("disk-full test failed: %v", err)
		}
		return
	}
	diskFull(t, os.Getenv(diskFullBinEnv))
}

func diskFull(t *testing.T, bin string) {
	ctx := context.Background()
	small := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(small, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", small, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=8m,mode=0700"); err != nil {
		t.Skipf("mounting an 8 MiB tmpfs: %v", err)
	}
	defer syscall.Unmount(small, syscall.MNT_DETACH)

	h := newHarness(t, bin, filepath.Join(small, "db.sqlite"), 10)
	h.startLoad(5 * time.Millisecond)
	// Fill the filesystem while the writes go on.
	filler := filepath.Join(small, "filler")
	f, err := os.OpenFile(filler, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	filled := 0
	for {
		n, err := f.Write(chunk)
		filled += n
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	// Squeeze out the last bytes too.
	for _, size := range []int{4096, 512, 1} {
		for {
			n, err := f.Write(chunk[:size])
			filled += n
			if err != nil {
				break
			}
		}
	}
	f.Close()
	t.Logf("filesystem full after %d KiB of filler", filled>>10)

	// Writes are refused now, and say why.
	var apiErr *APIError
	// SQLite may still have room in pages it already holds; the load keeps
	// writing, so the disk must run out eventually.
	tstest.WaitFor(t, time.Minute, "writes to be refused on the full disk", func() error {
		var out struct {
			User apiUser `json:"user"`
		}
		o, err := h.api.do(ctx, "POST", "/api/v1/user", map[string]any{"name": fmt.Sprintf("full-%d", h.seq.Add(1))}, &out)
		if o == Refused && errors.As(err, &apiErr) {
			return nil
		}
		if o == Unknown {
			return tstest.Permanent(fmt.Errorf("creating a user on a full disk: no answer: %w", err))
		}
		return errors.New("writes still succeed")
	})
	if apiErr.Status != 507 || !strings.Contains(apiErr.Body, "disk is full") {
		t.Errorf("API write on a full disk: %v; want 507 saying the disk is full", apiErr)
	}
	t.Logf("API on a full disk: %v", apiErr)
	regErr := h.registerOne(ctx)
	if regErr == nil || !strings.Contains(regErr.Error(), "disk is full") || !strings.Contains(regErr.Error(), "503") {
		t.Errorf("registration on a full disk: %v; want a 503 saying the disk is full", regErr)
	}
	t.Logf("registration on a full disk: %v", regErr)

	// The server stays up and serves what it has.
	if h.srv.Exited() {
		t.Fatalf("server exited on a full disk: %s", h.srv.LogTail(2000))
	}
	if err := h.srv.WaitReady(ctx, 10*time.Second); err != nil {
		t.Errorf("health on a full disk: %v", err)
	}
	h.stopLoad()
	h.check("disk full")
	if err := h.fleet.WaitConverged(ctx, time.Minute); err != nil {
		t.Errorf("simulated nodes on a full disk: %v", err)
	}

	// Space returns: writes succeed again without a restart.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	tstest.WaitFor(t, time.Minute, "writes to succeed once space was freed", func() error {
		o, err := h.api.do(ctx, "POST", "/api/v1/user", map[string]any{"name": fmt.Sprintf("back-%d", h.seq.Add(1))}, nil)
		regErr := h.registerOne(ctx)
		if o != Acked || regErr != nil {
			return fmt.Errorf("API %v, registration %v", err, regErr)
		}
		return nil
	})
	h.startLoad(5 * time.Millisecond)
	regs0, writes0 := h.acked()
	tstest.WaitFor(t, time.Minute, "the load to recover", func() error {
		if regs, writes := h.acked(); regs < regs0+5 || writes < writes0+20 {
			return fmt.Errorf("%d registrations, %d writes acked", regs-regs0, writes-writes0)
		}
		return nil
	})
	h.stopLoad()
	h.check("space freed")

	// And nothing acknowledged is lost across a crash either.
	h.srv.Kill()
	if _, err := store.CheckIntegrity(ctx, h.srv.DB); err != nil {
		t.Errorf("after the disk-full episode and a kill: %v", err)
	}
	if err := h.srv.Start(); err != nil {
		t.Fatal(err)
	}
	if err := h.srv.WaitReady(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	h.check("restart")
	if err := h.fleet.WaitConverged(ctx, time.Minute); err != nil {
		t.Errorf("after the restart: %v", err)
	}
	regs, writes := h.acked()
	h.l.mu.Lock()
	t.Logf("acknowledged: %d registrations, %d admin writes; refused: %d admin writes (e.g. %q), registrations e.g. %q",
		regs, writes, h.l.writesRefused, h.l.refusals, h.regErrs)
	h.l.mu.Unlock()
}
