package crashtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// apiClient calls the server's REST API v1 with an API key.
type apiClient struct {
	base, key string
	hc        *http.Client
}

func newAPIClient(base, key string) *apiClient {
	return &apiClient{base: base, key: key, hc: &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}}
}

// APIError is a non-200 answer.
type APIError struct {
	Status int
	Body   string
}

// Error implements error.
func (e *APIError) Error() string { return fmt.Sprintf("http %d: %s", e.Status, e.Body) }

// do sends one request. The outcome is Acked for a 200 whose body
// decoded into out, Refused for any other answer and Unknown when no
// complete answer arrived.
func (c *apiClient) do(ctx context.Context, method, path string, body, out any) (Outcome, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return Refused, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return Refused, err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.hc.Do(req)
	if err != nil {
		return Unknown, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		return Unknown, err
	}
	if res.StatusCode != http.StatusOK {
		return Refused, &APIError{Status: res.StatusCode, Body: strings.TrimSpace(string(b))}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return Unknown, fmt.Errorf("decoding %s %s: %w", method, path, err)
		}
	}
	return Acked, nil
}

// apiUser, apiKey and apiNode are the parts of the API's JSON used here.
type apiUser struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

type apiKey struct {
	ID         string `json:"id"`
	Expiration string `json:"expiration"`
}

type apiNode struct {
	ID         string   `json:"id"`
	MachineKey string   `json:"machineKey"`
	GivenName  string   `json:"givenName"`
	Tags       []string `json:"tags"`
	Expiry     *string  `json:"expiry"`
}

func parseID(s string) uint64 {
	v, _ := strconv.ParseUint(s, 10, 64)
	return v
}

// observe reads the server's nodes, users and pre-auth keys.
func (c *apiClient) observe(ctx context.Context) (observed, error) {
	obs := observed{nodes: map[string]obsNode{}, users: map[uint64]string{}, keys: map[uint64]time.Time{}}
	var nodes struct {
		Nodes []apiNode `json:"nodes"`
	}
	if _, err := c.do(ctx, "GET", "/api/v1/node", nil, &nodes); err != nil {
		return obs, fmt.Errorf("listing nodes: %w", err)
	}
	obs.now = time.Now()
	for _, n := range nodes.Nodes {
		o := obsNode{id: parseID(n.ID), name: n.GivenName, tags: joinTags(n.Tags)}
		if n.Expiry != nil {
			if t, err := time.Parse(time.RFC3339, *n.Expiry); err == nil && !t.After(obs.now) {
				o.expired = true
			}
		}
		obs.nodes[n.MachineKey] = o
	}
	var users struct {
		Users []apiUser `json:"users"`
	}
	if _, err := c.do(ctx, "GET", "/api/v1/user", nil, &users); err != nil {
		return obs, fmt.Errorf("listing users: %w", err)
	}
	for _, u := range users.Users {
		obs.users[parseID(u.ID)] = u.Name
	}
	var keys struct {
		Keys []apiKey `json:"preAuthKeys"`
	}
	if _, err := c.do(ctx, "GET", "/api/v1/preauthkey", nil, &keys); err != nil {
		return obs, fmt.Errorf("listing pre-auth keys: %w", err)
	}
	for _, k := range keys.Keys {
		var exp time.Time
		if k.Expiration != "" {
			exp, _ = time.Parse(time.RFC3339, k.Expiration)
		}
		obs.keys[parseID(k.ID)] = exp
	}
	return obs, nil
}

func joinTags(tags []string) string {
	return strings.Join(slices.Sorted(slices.Values(tags)), ",")
}

// Admin operations, by weight.
var adminOps = []struct {
	name   string
	weight int
}{
	{"rename-node", 25}, {"tag-node", 10}, {"create-user", 15}, {"rename-user", 15},
	{"create-key", 15}, {"expire-key", 10}, {"expire-node", 5}, {"delete-node", 5},
}

// admin is one admin writer: it edits only the objects assigned to it,
// one request at a time, so the order of its writes to an object is the
// order the server sees them.
type admin struct {
	id  int
	api *apiClient
	l   *ledger
	seq *atomic.Int64 // run-wide, for unique names
	rng *rand.Rand
}

// run makes random edits until ctx ends or one goes unanswered (the
// server is gone: later writes could not even be sent).
func (a *admin) run(ctx context.Context) {
	total := 0
	for _, op := range adminOps {
		total += op.weight
	}
	for ctx.Err() == nil {
		w := a.rng.IntN(total)
		for _, op := range adminOps {
			if w < op.weight {
				if a.do(ctx, op.name) == Unknown {
					return
				}
				break
			}
			w -= op.weight
		}
	}
}

// pickNode returns a node of this writer that is known to the server and
// not being deleted; probesOnly leaves out the fleet (their map streams
// must keep working).
func (a *admin) pickNode(probesOnly bool) *nodeRec {
	var c []*nodeRec
	for _, r := range a.l.nodes {
		if r.writer == a.id && r.id != 0 && !r.exist.delTry && !(probesOnly && r.fleet) {
			c = append(c, r)
		}
	}
	if len(c) == 0 {
		return nil
	}
	return c[a.rng.IntN(len(c))]
}

func (a *admin) pickUser() *userRec {
	var c []*userRec
	for _, u := range a.l.users {
		if u.writer == a.id && u.id != 0 {
			c = append(c, u)
		}
	}
	if len(c) == 0 {
		return nil
	}
	return c[a.rng.IntN(len(c))]
}

func (a *admin) pickKey() *keyRec {
	var c []*keyRec
	for _, k := range a.l.keys {
		if k.writer == a.id && !k.expTry {
			c = append(c, k)
		}
	}
	if len(c) == 0 {
		return nil
	}
	return c[a.rng.IntN(len(c))]
}

// do runs one operation and records it. Records are taken under the
// ledger lock; the request itself runs without it.
func (a *admin) do(ctx context.Context, op string) (o Outcome) {
	l := a.l
	seq := a.seq.Add(1)
	switch op {
	case "rename-node", "tag-node", "expire-node", "delete-node":
		l.mu.Lock()
		r := a.pickNode(op == "expire-node" || op == "delete-node")
		l.mu.Unlock()
		if r == nil {
			return Refused
		}
		path := "/api/v1/node/" + strconv.FormatUint(r.id, 10)
		var (
			err   error
			value string
		)
		switch op {
		case "rename-node":
			value = fmt.Sprintf("cr-%d", seq)
			o, err = a.api.do(ctx, "POST", path+"/rename/"+value, nil, nil)
		case "tag-node":
			value = fmt.Sprintf("tag:cr-%d", seq)
			o, err = a.api.do(ctx, "POST", path+"/tags", map[string]any{"tags": []string{value}}, nil)
		case "expire-node":
			o, err = a.api.do(ctx, "POST", path+"/expire", nil, nil)
		case "delete-node":
			o, err = a.api.do(ctx, "DELETE", path, nil, nil)
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		l.count(o, err)
		switch op {
		case "rename-node":
			r.name.record(value, o)
		case "tag-node":
			r.tags.record(value, o)
			if o != Refused {
				// Tagging a node removes its key expiry.
				r.expTry = false
			}
		case "expire-node":
			if o != Refused {
				r.expTry, r.expired = true, o
			}
		case "delete-node":
			if o != Refused {
				r.exist.delTry, r.exist.deleted = true, o
			}
		}
	case "create-user":
		name := fmt.Sprintf("cu-%d", seq)
		var out struct {
			User apiUser `json:"user"`
		}
		var err error
		o, err = a.api.do(ctx, "POST", "/api/v1/user", map[string]any{"name": name}, &out)
		l.mu.Lock()
		defer l.mu.Unlock()
		l.count(o, err)
		if o == Refused {
			return o
		}
		u := &userRec{created: name, writer: a.id, exist: existence{created: o}}
		u.name.record(name, o)
		if o == Acked {
			u.id = parseID(out.User.ID)
		}
		l.users[name] = u
	case "rename-user":
		l.mu.Lock()
		u := a.pickUser()
		l.mu.Unlock()
		if u == nil {
			return Refused
		}
		name := fmt.Sprintf("cu-%d", seq)
		var err error
		o, err = a.api.do(ctx, "POST", fmt.Sprintf("/api/v1/user/%d/rename/%s", u.id, name), nil, nil)
		l.mu.Lock()
		defer l.mu.Unlock()
		l.count(o, err)
		u.name.record(name, o)
	case "create-key":
		l.mu.Lock()
		u := a.pickUser()
		l.mu.Unlock()
		if u == nil {
			return Refused
		}
		var out struct {
			Key apiKey `json:"preAuthKey"`
		}
		var err error
		o, err = a.api.do(ctx, "POST", "/api/v1/preauthkey", map[string]any{
			"user": strconv.FormatUint(u.id, 10), "reusable": true,
			"expiration": time.Now().Add(48 * time.Hour).UTC().Format(time.RFC3339),
		}, &out)
		l.mu.Lock()
		defer l.mu.Unlock()
		l.count(o, err)
		if o == Acked {
			id := parseID(out.Key.ID)
			l.keys[id] = &keyRec{id: id, writer: a.id, user: u.id, exist: existence{created: Acked}}
		}
	case "expire-key":
		l.mu.Lock()
		k := a.pickKey()
		l.mu.Unlock()
		if k == nil {
			return Refused
		}
		var err error
		o, err = a.api.do(ctx, "POST", "/api/v1/preauthkey/expire", map[string]any{"id": strconv.FormatUint(k.id, 10)}, nil)
		l.mu.Lock()
		defer l.mu.Unlock()
		l.count(o, err)
		if o != Refused {
			k.expTry, k.expired = true, o
		}
	}
	return o
}
