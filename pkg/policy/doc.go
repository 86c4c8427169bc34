// Package policy reads a Tailscale policy file (HuJSON) and compiles it,
// against the current users and nodes, into what each node receives: its
// packet filter, its SSH policy, its node capabilities (nodeAttrs) and the
// set of peers it may see.
//
// Users write Tailscale policy files today; they must work here unchanged
// and give the same packet filters as Tailscale's control plane. The
// output was checked against the captures of Tailscale's control plane
// that Headscale keeps (acl, grant, ssh, routes, nodeAttrs, tests and
// sshTests captures; see TestCompatCaptures). Decisions where Tailscale
// and Headscale differ or the behaviour was unclear:
//
//   - The file is read by walking hujson's syntax tree, whose values carry
//     byte offsets into the original text, so every error names the
//     offending element as line:column (1-based, column in characters)
//     plus its path, e.g. `3:21: acls[0].src[1]: ...`. All problems are
//     reported at once (ErrorList).
//   - Keys are matched case-insensitively, unknown keys and duplicate keys
//     are rejected, and null is the same as an absent key, as in Headscale.
//     ACL entries accept only "src"/"dst": Tailscale's legacy "users" and
//     "ports" are rejected with a hint, as Headscale does. Keys starting
//     with "#" in an ACL entry are ignored (headscale-admin metadata).
//   - Groups contain users only; a group inside a group (so also a cycle)
//     is an error, as in Tailscale and Headscale. Tags may own tags.
//   - A user token is "name@" or an e-mail address: one trailing "@" is
//     stripped and the rest compared with each user's e-mail and name
//     (Headscale v2); "user:*@domain" means every user with an address in
//     domain. A token that matches nobody is ignored with a warning (a
//     group with a deleted user keeps working, Headscale #2967); one that
//     matches several users is a Compile error.
//   - "oidcgroup:<group>" (an extension; Tailscale and Headscale have no
//     such alias) names the users whose identity provider put them in
//     group, as User.Groups holds it (compared exactly, surrounding white
//     space aside). It may stand wherever a user or group may, including
//     inside a "groups" entry, and never mixes with the policy's own
//     "group:" names (Tailscale's synced groups are
//     "group:<name>@<domain>", but OIDC groups have no domain, and a
//     shared namespace would let the provider add members to a group the
//     policy defines). A provider group nobody has names nobody, without
//     a warning: users get their groups when they log in.
//   - Source "*" becomes the tailnet ranges (100.64.0.0/10 minus the
//     ChromeOS VM range 100.115.92.0/23, and fd7a:115c:a1e0::/48) plus every
//     approved subnet route, as Tailscale and Headscale 0.29 send it. Only
//     autogroup:danger-all (and "no policy") gives SrcIPs ["*"].
//     Destination "*" is sent as {"IP": "*"}.
//   - SrcIPs list every source node address separately, sorted as strings,
//     as Tailscale does (Headscale merges adjacent addresses into ranges;
//     with sequential addresses that changes the wire form, not the
//     meaning). Destinations list the node's own addresses, and a host or
//     prefix as written; autogroup:internet is sent as address ranges.
//   - Rules with identical SrcIPs and IPProto are merged at the position
//     of the first one, over the whole rule list, as Headscale does.
//   - No policy, or a policy with neither "acls" nor "grants", allows
//     everything (SrcIPs ["*"], as Headscale; Tailscale sends its default
//     policy's src "*" ranges instead). "acls": [] or "grants": [] denies
//     everything.
//   - Routes: Node.ApprovedRoutes are optional. With them, subnet routers
//     receive the rules for their subnets, exit nodes the
//     autogroup:internet rules, and "via" grants steer to tagged routers;
//     without them these compile to nothing.
//   - Rejected like Headscale: funnel and ipPool in nodeAttrs, autogroups
//     other than internet, member, tagged, self, nonroot and danger-all,
//     and proto "*".
//
// A Policy is immutable after Parse; a Compiled is immutable after Compile
// (per-node results are computed on first use and cached) and safe for
// concurrent use. When nodes are added, removed or changed (tags, owner,
// addresses, routes), Compiled.Update derives the new compilation from the
// old one at a cost proportional to what the changed nodes touch, with the
// same answers as a full compilation, and says which nodes' view changed
// (Affected). Policy and user changes need a full compilation, except a
// change to users' provider groups that the policy does not name
// (NamesIdPGroup), which changes nothing.
//
// # Glossary of the compiled form
//
// The compiler's internal vocabulary, in terms of the policy file and of
// what nodes receive:
//
//   - alias: one reference to nodes or addresses as written in the file
//     (a user, group, tag, host, prefix, autogroup or "*"), with its
//     position for errors (alias.go). An identity alias (users, groups,
//     tags, autogroup:member/tagged) names nodes, whose own addresses are
//     then listed; an address alias (hosts, prefixes, autogroup:internet)
//     covers whatever nodes hold or route those addresses.
//   - grant: one entry of "grants", or one destination of an ACL entry:
//     ACLs are desugared into grants while parsing (parse.go), so the
//     compiler knows only grants.
//   - world: the users and nodes one compilation is made against, indexed
//     for resolving aliases (resolve.go).
//   - slot: a node's position in the world. Node sets are bitsets over
//     slots. A full compilation gives slots in node ID order; Update keeps
//     every node in its slot (new nodes take a free or new one), so the
//     node sets of unchanged nodes stay valid across updates.
//   - lineage: what a full compilation (CompileWithOptions) shares with
//     every compilation Update derives from it: everything that depends
//     only on the policy and the users (the alias table, specs, units, self
//     templates, SSH and nodeAttrs rules, the filter table). Node-dependent
//     data lives in the Compiled itself, copied on write (cow.go).
//   - spec: where one SrcIPs list comes from (srcIPsSpec): a grant's
//     sources, or an app grant's destinations for its companion rules.
//     Grants with the same "src" share a spec. Its per-compilation state
//     (specState) is the list resolved against the nodes: the sorted
//     address strings, their hash and the source nodes.
//   - class: one distinct SrcIPs content (filter.go). Specs resolving to
//     the same list share a class; rules with the same class and protocols
//     are merged into one FilterRule at the position of the first one in
//     the whole policy, as Headscale does.
//   - unit: one (grant, "ip" entry, destination) piece of the packet
//     filter, numbered in policy order (seq). Its kind says how its
//     destination is sent: "*" (wild), a node's own addresses (nodes),
//     addresses as written (addrs), a CapGrant rule (cap) or a via route
//     (via). For each node, the units whose destinations concern it become
//     its FilterRules. Wild units are visited for every node; the others
//     are listed per node (nodeState.units).
//   - unit node sets (unitNodeSets, Compiled.unitSets): the
//     node-dependent part of a unit: the nodes holding a via tag, the nodes
//     whose filter may get the rule (covered) and the destinations it makes
//     visible to its sources.
//   - companion rule: the reverse capability Tailscale sends to an app
//     grant's destinations for some capabilities (Taildrive, relay); a
//     cap unit whose spec is the grant's destinations (companionCaps).
//   - self template: the autogroup:self part of a grant, kept aside and
//     expanded per node: the SrcIPs are the addresses of that node's
//     owner's nodes among the grant's sources (selfState holds them per
//     user).
//   - visibility signature: the set of grants (with visible destinations)
//     whose sources include a node; nodes with the same signature share one
//     reach set, the union of those grants' destinations, which answers
//     CanSee (visibility.go).
//   - filter table: lets nodes with equal filters share one rule slice
//     across a lineage (FilterKey); entries are weak pointers.
//   - Affected: which nodes' view may differ after Update (a superset);
//     the server updates only those sessions.
//
// # Adding a policy construct
//
// A new key, alias kind or rule option touches, in this order:
//
//   - parse.go (and alias.go for a new alias or autogroup): read it from
//     the HuJSON tree with its position, reject what Headscale rejects,
//     and desugar it into the existing structures where possible.
//   - resolve.go: what nodes and addresses a new alias stands for, in a
//     full compilation.
//   - compile.go (filter rules and units), ssh.go, attrs.go (nodeAttrs,
//     autoApprovers), filter.go (rule output and merging): the full
//     compilation.
//   - update.go: the incremental path. Whatever the construct makes depend
//     on nodes (tags, owners, addresses, routes, hostnames) must be
//     recomputed for changed nodes there, and the nodes whose view it
//     changes must land in Affected.
//   - visibility.go: whether it makes nodes visible to each other.
//   - runtests.go: how the policy's own "tests"/"sshTests" evaluate it.
//   - Tests: a case in policy_test.go (output as Tailscale sends it), the
//     generator gen_test.go so the differential test
//     TestUpdateMatchesCompile (Update against a full compilation over
//     random policies and node changes) covers it, a seed in fuzz_test.go,
//     and TestCompatCaptures, whose known-mismatch list must not grow
//     without a reason.
//
// If Update cannot handle a change cheaply, it may recompile in full
// (see TestUpdateFallsBack): correctness first, the differential test is
// the guard.
package policy
