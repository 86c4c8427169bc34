package control

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/hsctl/headscale/pkg/mapper"
	"github.com/hsctl/headscale/pkg/state"
	"tailscale.com/tailcfg"
)

// serveMap handles /machine/map: endpoint and host info updates
// (non-streaming) and the long-lived streaming map session.
func (c *noiseConn) serveMap(w http.ResponseWriter, r *http.Request) {
	s := c.srv
	var req tailcfg.MapRequest
	if err := decode(r, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if req.Version < MinCapabilityVersion {
		http.Error(w, tooOld(req.Version), http.StatusBadRequest)
		return
	}
	node, ok := s.opts.State.NodeByNodeKey(req.NodeKey)
	if !ok || node.MachineKey != c.machine {
		http.Error(w, "unknown node key: register first", http.StatusUnauthorized)
		return
	}
	err := s.opts.State.ApplyMapUpdate(node.ID, state.MapUpdate{
		Version:   req.Version,
		DiscoKey:  req.DiscoKey,
		Endpoints: req.Endpoints,
		Hostinfo:  req.Hostinfo,
	})
	if errors.Is(err, state.ErrNodeNotFound) {
		http.Error(w, "node was deleted", http.StatusUnauthorized)
		return
	}
	if !req.Stream && req.OmitPeers {
		// A "lite" update: nothing to send back.
		w.WriteHeader(http.StatusOK)
		return
	}
	log := s.log.With("node", node.ID, "name", node.GivenName)
	hub := s.opts.Hub
	sess := hub.NewSession(node.ID, req.Compress == "zstd", req.KeepAlive)
	fw := &responseWriter{w: w, rc: http.NewResponseController(w)}
	if !req.Stream {
		// One full map, then done (non-streaming polls): a snapshot, without
		// marking the node online or registering a session.
		var snap state.Snapshot
		if err := s.opts.State.Resync(node.ID, func(sn state.Snapshot) { snap = sn }); err != nil {
			http.Error(w, "node was deleted", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		if err := sess.ServeOnce(r.Context(), fw, snap); err != nil {
			log.Debug("writing a non-streaming map", "err", err)
		}
		return
	}
	if err := s.opts.State.Connect(node.ID, sess.Attach); err != nil {
		http.Error(w, "node was deleted", http.StatusUnauthorized)
		return
	}
	defer func() {
		hub.Detach(sess)
		s.opts.State.Disconnect(node.ID)
	}()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	log.Debug("map session started", "compress", req.Compress)
	err = sess.Serve(r.Context(), fw, mapper.ServeOptions{KeepAlive: s.opts.KeepAlive, Resync: s.opts.State.Resync})
	switch {
	case errors.Is(err, mapper.ErrEnded):
		log.Info("map session ended by server", "reason", sess.Reason())
	case errors.Is(err, context.Canceled):
		log.Debug("map session closed by client")
	default:
		log.Info("map session ended", "err", err)
	}
}

type responseWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func (rw *responseWriter) Write(b []byte) (int, error) { return rw.w.Write(b) }
func (rw *responseWriter) Flush() error                { return rw.rc.Flush() }
func (rw *responseWriter) SetWriteDeadline(t time.Time) error {
	return rw.rc.SetWriteDeadline(t)
}
