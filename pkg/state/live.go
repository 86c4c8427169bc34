package state

import (
	"time"

	"github.com/hsctl/headscale/pkg/ids"
)

// Presence and reported fields across servers (Options.Publish). A node
// is online while any server holds a map session of it: each server
// publishes when its own sessions of a node begin (the first) and end
// (the last), and what the node's client reported, and applies the other
// servers' facts (RemoteChange.Live, RemoteChange.ServerGone). A node
// that moves from one server to another does not go offline for its
// peers when the new server's presence arrives before the old one's end.

// LiveFact is what one server tells the others about a node connected to
// it.
type LiveFact struct {
	// Node is the node the fact is about.
	Node ids.NodeID
	// Online, when set, says this server's first session of the node
	// began (true) or its last ended (false).
	Online *bool
	// At is when it happened, by the publishing server's clock: the
	// node's last-seen time when it goes offline.
	At time.Time
	// Report is what the node's client reported, as held after the
	// change: endpoints, disco key, capability version and host info
	// (whose NetInfo names the home DERP region).
	Report MapUpdate
	// ReportedAt is when the client made Report, by the clock of the
	// server it reported to (zero: unknown). Of two servers' reports of a
	// node the one made later wins, whichever arrives first.
	ReportedAt time.Time
}

// clustered says this State is one of several serving the tailnet.
func (s *State) clustered() bool { return s.opts.Publish != nil }

// publishLocked tells the other servers about node id: its presence here
// when online is set, and what its client reported (s.mu held).
func (s *State) publishLocked(id ids.NodeID, online *bool) {
	if s.opts.Publish == nil {
		return
	}
	n, ok := s.nodes[id]
	if !ok {
		return
	}
	s.opts.Publish(LiveFact{Node: id, Online: online, At: s.now(), ReportedAt: s.reportedAt[id], Report: MapUpdate{
		Version: n.Cap, DiscoKey: n.DiscoKey, Endpoints: n.Endpoints, Hostinfo: n.Hostinfo,
	}})
}

// applyRemoteLiveLocked applies server origin's fact f (s.mu held).
func (s *State) applyRemoteLiveLocked(origin string, f LiveFact) {
	n, ok := s.nodes[f.Node]
	if !ok {
		return
	}
	if f.Online != nil && *f.Online {
		set := s.remote[f.Node]
		if set == nil {
			set = make(map[string]bool)
			s.remote[f.Node] = set
		}
		set[origin] = true
		if t := s.ephemeral[f.Node]; t != nil {
			t.Stop()
			delete(s.ephemeral, f.Node)
		}
		if !n.Online {
			s.setOnlineLocked(n, true, f.At)
		}
	}
	// Reports of one node from two servers (it moved) are applied in the
	// order they were made, not the order their batches committed: a late
	// report from the server the node left is older than what its new
	// server told. (A batch may carry a session that began and ended
	// within it as its end alone: its report still counts.)
	if !f.ReportedAt.Before(s.reportedAt[f.Node]) {
		s.reportedAt[f.Node] = f.ReportedAt
		s.applyReportLocked(f.Node, f.Report, false)
	}
	if f.Online != nil && !*f.Online {
		s.dropRemoteSessionLocked(f.Node, origin, f.At)
	}
}

// dropRemoteSessionLocked forgets server origin's session of node id;
// the node goes offline, last seen at, when no server holds one any more.
func (s *State) dropRemoteSessionLocked(id ids.NodeID, origin string, at time.Time) {
	set := s.remote[id]
	if !set[origin] {
		return
	}
	delete(set, origin)
	if len(set) > 0 {
		return
	}
	delete(s.remote, id)
	if n, ok := s.nodes[id]; ok && n.Online && s.sessions[id] == 0 {
		s.setOnlineLocked(n, false, at)
		if n.Ephemeral {
			s.scheduleEphemeralLocked(id)
		}
	}
}

// serverGoneLocked forgets every session server origin held: it stopped
// or was declared dead at at.
func (s *State) serverGoneLocked(origin string, at time.Time) {
	for id, set := range s.remote {
		if set[origin] {
			s.dropRemoteSessionLocked(id, origin, at)
		}
	}
}
