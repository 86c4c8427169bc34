package crashtest

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/store"
)

// TestBackupUnderWriteLoad takes online backups with `headscale backup`
// while nodes register and admin writers edit, then restores each one with
// `headscale restore` into the stopped server: every backup passes
// integrity_check, holds every registration acknowledged before it
// started, and the restored server starts, lists those nodes and serves
// the simulated nodes their full maps again.
func TestBackupUnderWriteLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a server binary under load")
	}
	ctx := context.Background()
	h := newHarness(t, buildHeadscale(t), "", 10)
	h.startLoad(2 * time.Millisecond)

	type snap struct {
		path   string
		before map[string]bool // machine keys acked before the backup began
	}
	var snaps []snap
	dir := t.TempDir()
	for i := range 4 {
		// Let the writes move on between backups.
		regs0, writes0 := h.acked()
		tstest.WaitFor(t, time.Minute, "the load to move on", func() error {
			if regs, writes := h.acked(); regs < regs0+5 || writes < writes0+20 {
				return fmt.Errorf("the load stalled: %d registrations, %d admin writes acked", regs, writes)
			}
			return nil
		})
		before := map[string]bool{}
		h.l.mu.Lock()
		for mk, r := range h.l.nodes {
			if r.exist.created == Acked && !r.exist.delTry {
				before[mk] = true
			}
		}
		h.l.mu.Unlock()
		path := filepath.Join(dir, fmt.Sprintf("backup-%d.sqlite", i))
		out, err := h.srv.CLI(ctx, "backup", "--output", path)
		if err != nil {
			t.Fatalf("backup %d under load: %v", i, err)
		}
		if !strings.Contains(out, "integrity ok") {
			t.Errorf("backup %d: %q", i, out)
		}
		if _, err := store.CheckIntegrity(ctx, path); err != nil {
			t.Fatalf("backup %d: %v", i, err)
		}
		snaps = append(snaps, snap{path, before})
	}
	h.stopLoad()
	regs, writes := h.acked()
	t.Logf("%d backups taken while %d registrations and %d admin writes were acknowledged", len(snaps), regs, writes)
	if err := h.srv.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}

	for i, s := range snaps {
		if _, err := h.srv.CLI(ctx, "restore", s.path); err != nil {
			t.Fatalf("restore %d: %v", i, err)
		}
		if err := h.srv.Start(); err != nil {
			t.Fatal(err)
		}
		if err := h.srv.WaitReady(ctx, time.Minute); err != nil {
			t.Fatalf("server after restoring backup %d: %v", i, err)
		}
		h.api.hc.CloseIdleConnections()
		obs, err := h.api.observe(ctx)
		if err != nil {
			t.Fatalf("server after restoring backup %d: %v", i, err)
		}
		for mk := range s.before {
			if _, ok := obs.nodes[mk]; !ok {
				t.Errorf("backup %d: node %s, acknowledged before the backup began, is missing", i, short(mk))
			}
		}
		if err := h.fleet.WaitConverged(ctx, time.Minute); err != nil {
			t.Errorf("server restored from backup %d: %v", i, err)
		}
		t.Logf("backup %d restored: %d nodes (%d acknowledged before it), %d users, %d pre-auth keys; %d simulated nodes reconverged",
			i, len(obs.nodes), len(s.before), len(obs.users), len(obs.keys), h.fleet.N())
		if err := h.srv.Stop(30 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
}
