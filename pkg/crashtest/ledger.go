package crashtest

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Outcome is what the client learned about one write.
type Outcome int

const (
	// Acked: the server answered success, so the write must survive.
	Acked Outcome = iota
	// Refused: the server answered with an error, so nothing was written.
	Refused
	// Unknown: no answer arrived (the server was killed, or the
	// connection broke); the write may or may not have been applied.
	Unknown
)

// String names the outcome.
func (o Outcome) String() string {
	switch o {
	case Acked:
		return "acked"
	case Refused:
		return "refused"
	}
	return "unknown"
}

// write is one value written to a field and what became of it.
type write struct {
	value   string
	outcome Outcome
}

// history is the writes to one field since it was last verified, in the
// order they were made (one writer per field, so that order is the order
// the server saw them). settled marks the first entry as the value the
// server showed at the last verification: durable, as good as acked.
type history struct {
	writes  []write
	settled bool
}

// record notes a write.
func (h *history) record(v string, o Outcome) {
	h.writes = append(h.writes, write{v, o})
}

// settle makes v, the value the server now shows, the base for later
// writes.
func (h *history) settle(v string) {
	h.writes = append(h.writes[:0], write{v, Acked})
	h.settled = true
}

// allowed reports whether the server may show v after a crash: the last
// acknowledged value (or the settled base), or a value written after it
// whose answer never arrived. Refused writes were never applied. With no
// acknowledged write and no base, only unknown writes are known, so any
// value is accepted (the field's initial value was never observed).
func (h *history) allowed(v string) bool {
	last := -1
	for i, w := range h.writes {
		if w.outcome == Acked {
			last = i
		}
	}
	if last < 0 {
		return true
	}
	if h.writes[last].value == v {
		return true
	}
	for _, w := range h.writes[last+1:] {
		if w.outcome == Unknown && w.value == v {
			return true
		}
	}
	return false
}

// acked counts the acknowledged writes in h (the settled base excluded).
func (h *history) acked() int {
	n := 0
	for i, w := range h.writes {
		if w.outcome == Acked && !(i == 0 && h.settled) {
			n++
		}
	}
	return n
}

// want describes what the server must show: the last acked value, and
// the unknown writes after it.
func (h *history) want() string {
	last := -1
	for i, w := range h.writes {
		if w.outcome == Acked {
			last = i
		}
	}
	if last < 0 {
		return "anything"
	}
	s := fmt.Sprintf("%q", h.writes[last].value)
	var alt []string
	for _, w := range h.writes[last+1:] {
		if w.outcome == Unknown {
			alt = append(alt, fmt.Sprintf("%q", w.value))
		}
	}
	if len(alt) > 0 {
		s += " or a later unacknowledged " + strings.Join(alt, ", ")
	}
	return s
}

// existence tracks whether an object (a node, a user, a pre-auth key)
// must exist: created and deleted, each acked or not.
type existence struct {
	created Outcome
	deleted Outcome
	delTry  bool // a delete was attempted
}

// must reports what the server must show: +1 present, -1 absent, 0
// either.
func (e existence) must() int {
	switch {
	case e.delTry && e.deleted == Acked:
		return -1
	case e.delTry && e.deleted == Unknown:
		return 0
	case e.created == Acked:
		return 1
	}
	return 0
}

// nodeRec is what the ledger knows of one node.
type nodeRec struct {
	machine string // "mkey:..."
	host    string // hostname it registered with
	writer  int    // the admin writer that edits it
	fleet   bool   // a simulated node that keeps a map stream
	id      uint64 // server ID once seen
	exist   existence
	name    history // given name
	tags    history // sorted, comma-joined
	expired Outcome // of an expire request; expTry when tried
	expTry  bool
}

type userRec struct {
	created string // name it was created with
	writer  int
	id      uint64
	exist   existence
	name    history
}

type keyRec struct {
	id      uint64
	writer  int
	user    uint64
	exist   existence
	expired Outcome
	expTry  bool
}

// ledger is every write the run made and what the server answered.
type ledger struct {
	mu    sync.Mutex
	nodes map[string]*nodeRec // by machine key
	users map[string]*userRec // by creation name
	keys  map[uint64]*keyRec

	regAcked, regUnknown                      int
	writesAcked, writesRefused, writesUnknown int
	refusals                                  []string // a sample of refusal reasons
}

func newLedger() *ledger {
	return &ledger{nodes: map[string]*nodeRec{}, users: map[string]*userRec{}, keys: map[uint64]*keyRec{}}
}

// count notes an admin write's outcome; the caller holds mu.
func (l *ledger) count(o Outcome, err error) {
	switch o {
	case Acked:
		l.writesAcked++
	case Refused:
		l.writesRefused++
		if len(l.refusals) < 5 && err != nil {
			l.refusals = append(l.refusals, err.Error())
		}
	default:
		l.writesUnknown++
	}
}

// registered notes a registration attempt.
func (l *ledger) registered(machine, host string, writer int, fleet bool, o Outcome) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if o == Refused {
		return
	}
	if o == Acked {
		l.regAcked++
	} else {
		l.regUnknown++
	}
	if r, ok := l.nodes[machine]; ok {
		if o == Acked {
			r.exist.created = Acked
		}
		return
	}
	l.nodes[machine] = &nodeRec{machine: machine, host: host, writer: writer, fleet: fleet, exist: existence{created: o}}
}

// Observed state of the server, from its API after a restart.
type observed struct {
	nodes map[string]obsNode   // by machine key
	users map[uint64]string    // ID -> name
	keys  map[uint64]time.Time // ID -> expiration (zero: none)
	now   time.Time
}

type obsNode struct {
	id      uint64
	name    string
	tags    string
	expired bool
}

// verify compares the server's state with every acknowledged write,
// returns the problems, and then settles the ledger on what the server
// shows (so later checks start from durable values). It also reports how
// many unknown writes turned out applied, and counts checked writes.
func (l *ledger) verify(obs observed) (problems []string, checked, landed, dropped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for mk, r := range l.nodes {
		o, present := obs.nodes[mk]
		switch must := r.exist.must(); {
		case must > 0 && !present:
			problems = append(problems, fmt.Sprintf("node %s (%s): acknowledged registration missing", r.host, short(mk)))
		case must < 0 && present:
			problems = append(problems, fmt.Sprintf("node %s (%s): acknowledged delete undone", r.host, short(mk)))
		}
		if r.exist.created == Acked || r.exist.delTry && r.exist.deleted == Acked {
			checked++
		}
		if r.exist.created == Unknown {
			if present {
				landed++
			} else {
				dropped++
			}
		}
		if !present {
			delete(l.nodes, mk)
			continue
		}
		r.id = o.id
		r.exist = existence{created: Acked}
		for _, f := range []struct {
			what string
			h    *history
			v    string
		}{{"name", &r.name, o.name}, {"tags", &r.tags, o.tags}} {
			checked += f.h.acked()
			if !f.h.allowed(f.v) {
				problems = append(problems, fmt.Sprintf("node %d %s: %s is %q, want %s", o.id, r.host, f.what, f.v, f.h.want()))
			}
			f.h.settle(f.v)
		}
		if r.expTry && r.expired == Acked {
			checked++
			if !o.expired {
				problems = append(problems, fmt.Sprintf("node %d %s: acknowledged expiry missing", o.id, r.host))
			}
		}
		r.expTry = false
	}
	for created, u := range l.users {
		if u.id == 0 {
			// Created without an answer: find it by the name it was
			// created with.
			for id, name := range obs.users {
				if name == created {
					u.id = id
				}
			}
		}
		name, present := obs.users[u.id]
		present = present && u.id != 0
		switch must := u.exist.must(); {
		case must > 0 && !present:
			problems = append(problems, fmt.Sprintf("user %s (id %d): acknowledged creation missing", created, u.id))
		case must < 0 && present:
			problems = append(problems, fmt.Sprintf("user %s (id %d): acknowledged delete undone", created, u.id))
		}
		if u.exist.created == Acked {
			checked++
		}
		if u.exist.created == Unknown {
			if present {
				landed++
			} else {
				dropped++
			}
		}
		if !present {
			delete(l.users, created)
			continue
		}
		u.exist = existence{created: Acked}
		checked += u.name.acked()
		if !u.name.allowed(name) {
			problems = append(problems, fmt.Sprintf("user %d: name is %q, want %s", u.id, name, u.name.want()))
		}
		u.name.settle(name)
	}
	for id, k := range l.keys {
		exp, present := obs.keys[id]
		if k.exist.must() > 0 && !present {
			problems = append(problems, fmt.Sprintf("pre-auth key %d: acknowledged creation missing", id))
		}
		if k.exist.created == Acked {
			checked++
		}
		if !present {
			delete(l.keys, id)
			continue
		}
		k.exist = existence{created: Acked}
		if k.expTry && k.expired == Acked {
			checked++
			if exp.IsZero() || exp.After(obs.now) {
				problems = append(problems, fmt.Sprintf("pre-auth key %d: acknowledged expiry missing (expires %v)", id, exp))
			}
		}
		k.expTry = false
	}
	slices.Sort(problems)
	return problems, checked, landed, dropped
}

func short(mk string) string {
	if len(mk) > 13 {
		return mk[:13] + "…"
	}
	return mk
}
