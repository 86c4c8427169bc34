package cli

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hsctl/headscale/pkg/api"
	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/spf13/cobra"
	"tailscale.com/types/key"
)

func (a *app) usersCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "users", Aliases: []string{"user"}, Short: "Manage users"}
	var display, email, picture string
	create := &cobra.Command{
		Use: "create NAME", Aliases: []string{"c", "new"}, Short: "Create a user", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out struct {
				User api.User `json:"user"`
			}
			body := map[string]string{"name": args[0], "displayName": display, "email": email, "pictureUrl": picture}
			if err := a.call("POST", "/api/v1/user", body, &out); err != nil {
				return err
			}
			return a.printHS(hsUserFrom(&out.User), func(w io.Writer) { fmt.Fprintf(w, "User %s created (id %s)\n", out.User.Name, out.User.ID) })
		},
	}
	create.Flags().StringVarP(&display, "display-name", "d", "", "display name")
	create.Flags().StringVarP(&email, "email", "e", "", "email address")
	create.Flags().StringVarP(&picture, "picture-url", "p", "", "profile picture URL")

	var idFlag ids.UserID
	var nameFlag, emailFlag string
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls", "show"}, Short: "List users", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if idFlag != 0 {
				q.Set("id", idFlag.String())
			}
			if nameFlag != "" {
				q.Set("name", nameFlag)
			}
			if emailFlag != "" {
				q.Set("email", emailFlag)
			}
			var out struct {
				Users []api.User `json:"users"`
			}
			if err := a.call("GET", "/api/v1/user?"+q.Encode(), nil, &out); err != nil {
				return err
			}
			return a.print(hsList(out.Users, func(u api.User) *hsUser { return hsUserFrom(&u) }), func(w *tabwriter.Writer) {
				usersTable(w, out.Users)
			})
		},
	}
	list.Flags().Uint64VarP((*uint64)(&idFlag), "identifier", "i", 0, "only the user with this ID")
	list.Flags().StringVarP(&nameFlag, "name", "n", "", "only the user with this name")
	list.Flags().StringVarP(&emailFlag, "email", "e", "", "only the user with this email")

	var newName string
	var renID ids.UserID
	var renName string
	rename := &cobra.Command{
		Use: "rename", Aliases: []string{"mv"}, Short: "Rename a user", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			uid, err := a.userID(renID, renName)
			if err != nil {
				return err
			}
			if newName == "" {
				return errors.New("--new-name is required")
			}
			var out struct {
				User api.User `json:"user"`
			}
			if err := a.call("POST", "/api/v1/user/"+uid+"/rename/"+url.PathEscape(newName), nil, &out); err != nil {
				return err
			}
			return a.printHS(hsUserFrom(&out.User), func(w io.Writer) { fmt.Fprintf(w, "User %s renamed to %s\n", uid, out.User.Name) })
		},
	}
	rename.Flags().Uint64VarP((*uint64)(&renID), "identifier", "i", 0, "user ID")
	rename.Flags().StringVarP(&renName, "name", "n", "", "current user name")
	rename.Flags().StringVarP(&newName, "new-name", "r", "", "new user name")

	var delID ids.UserID
	var delName string
	del := &cobra.Command{
		Use: "destroy", Aliases: []string{"delete", "rm"}, Short: "Delete a user (it must own no nodes)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			uid, err := a.userID(delID, delName)
			if err != nil {
				return err
			}
			if !a.confirm("Delete user " + uid + "?") {
				return errors.New("aborted")
			}
			if err := a.call("DELETE", "/api/v1/user/"+uid, nil, nil); err != nil {
				return err
			}
			return a.printHS(hsEmpty{}, func(w io.Writer) { fmt.Fprintln(w, "User deleted") })
		},
	}
	del.Flags().Uint64VarP((*uint64)(&delID), "identifier", "i", 0, "user ID")
	del.Flags().StringVarP(&delName, "name", "n", "", "user name")
	cmd.AddCommand(create, list, rename, del)
	return cmd
}

// userID resolves --identifier or --name to a user ID.
func (a *app) userID(id ids.UserID, name string) (string, error) {
	if id != 0 {
		return id.String(), nil
	}
	if name == "" {
		return "", errors.New("give the user with --identifier/-i or --name/-n")
	}
	return a.lookupUser(name)
}

// lookupUser accepts a user ID or name.
func (a *app) lookupUser(ref string) (string, error) {
	if _, err := strconv.ParseUint(ref, 10, 64); err == nil {
		return ref, nil
	}
	var out struct {
		Users []api.User `json:"users"`
	}
	if err := a.call("GET", "/api/v1/user?name="+url.QueryEscape(ref), nil, &out); err != nil {
		return "", err
	}
	if len(out.Users) == 0 {
		return "", fmt.Errorf("user %q not found", ref)
	}
	return out.Users[0].ID, nil
}

func (a *app) preauthkeysCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "preauthkeys", Aliases: []string{"preauthkey", "authkey", "pre"}, Short: "Manage pre-auth keys nodes register with"}
	var user, expiration string
	// -u/--user is on the group, as in Headscale up to 0.27, so both
	// `preauthkeys -u bob list` and `preauthkeys list -u bob` work.
	cmd.PersistentFlags().StringVarP(&user, "user", "u", "", "user, by name or ID: owner of a new key (optional for tag-only keys), filter of list, owner of the KEY to expire")
	cmd.PersistentFlags().StringVarP(&user, "namespace", "n", "", "user (the name before Headscale 0.23)")
	cmd.PersistentFlags().Lookup("namespace").Hidden = true
	var reusable, ephemeral bool
	var tags []string
	create := &cobra.Command{
		Use: "create", Aliases: []string{"c", "new"}, Short: "Create a pre-auth key (shown in full only now)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			body := map[string]any{"reusable": reusable, "ephemeral": ephemeral, "aclTags": tags}
			if user != "" {
				uid, err := a.lookupUser(user)
				if err != nil {
					return err
				}
				body["user"] = uid
			}
			d, err := config.ParseDuration(expiration)
			if err != nil || d <= 0 {
				return fmt.Errorf("--expiration %q: want a positive duration such as 1h, 30m or 90d", expiration)
			}
			body["expiration"] = time.Now().Add(d).UTC().Format(time.RFC3339)
			var out struct {
				Key api.PreAuthKey `json:"preAuthKey"`
			}
			if err := a.call("POST", "/api/v1/preauthkey", body, &out); err != nil {
				return err
			}
			return a.printHS(hsPreAuthKeyFrom(&out.Key), func(w io.Writer) { fmt.Fprintln(w, out.Key.Key) })
		},
	}
	create.Flags().BoolVar(&reusable, "reusable", false, "the key can register more than one node")
	create.Flags().BoolVar(&ephemeral, "ephemeral", false, "nodes registered with it are deleted when they stay offline")
	create.Flags().StringVarP(&expiration, "expiration", "e", "1h", "how long the key is valid (e.g. 30m, 24h, 90d)")
	create.Flags().StringSliceVar(&tags, "tags", nil, "tags the nodes get (tag:name, comma-separated)")

	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls", "show"}, Short: "List pre-auth keys (secrets redacted)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/api/v1/preauthkey"
			if user != "" {
				path += "?user=" + url.QueryEscape(user)
			}
			var out struct {
				Keys []api.PreAuthKey `json:"preAuthKeys"`
			}
			if err := a.call("GET", path, nil, &out); err != nil {
				return err
			}
			return a.print(hsList(out.Keys, func(k api.PreAuthKey) *hsPreAuthKey { return hsPreAuthKeyFrom(&k) }), func(w *tabwriter.Writer) {
				// Headscale 0.29's columns: the owner is the key's tags,
				// else its user.
				fmt.Fprintln(w, "ID\tKey/Prefix\tReusable\tEphemeral\tUsed\tExpiration\tCreated\tOwner")
				for _, k := range out.Keys {
					owner := "-"
					switch {
					case len(k.ACLTags) > 0:
						owner = strings.Join(k.ACLTags, ",")
					case k.User != nil:
						owner = k.User.Name
					}
					exp := "-"
					if k.Expiration != "" {
						exp = ts(k.Expiration)
					}
					fmt.Fprintf(w, "%s\t%s\t%v\t%v\t%v\t%s\t%s\t%s\n", k.ID, k.Key, k.Reusable, k.Ephemeral, k.Used, exp, ts(k.CreatedAt), owner)
				}
			})
		},
	}

	var expID, delID ids.PreAuthKeyID
	expire := &cobra.Command{
		Use: "expire [KEY]", Aliases: []string{"revoke", "exp", "e"}, Short: "Expire a pre-auth key now, by --id or (as up to Headscale 0.27) by the key itself",
		Long: "expire ends a pre-auth key's validity now. Name it by --id, or give the key itself (its full text or its\n" +
			"listed prefix form) as KEY, optionally with -u USER, which must then own it.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]string{}
			switch {
			case len(args) == 1 && expID != 0:
				return errors.New("give either KEY or --id, not both")
			case len(args) == 1:
				body["key"] = args[0]
				if user != "" {
					uid, err := a.lookupUser(user)
					if err != nil {
						return err
					}
					body["user"] = uid
				}
			case expID != 0:
				body["id"] = expID.String()
			default:
				return errors.New("--id (or the KEY) is required")
			}
			if err := a.call("POST", "/api/v1/preauthkey/expire", body, nil); err != nil {
				return err
			}
			return a.printHS(hsEmpty{}, func(w io.Writer) { fmt.Fprintln(w, "Key expired") })
		},
	}
	expire.Flags().Uint64VarP((*uint64)(&expID), "id", "i", 0, "key ID")
	del := &cobra.Command{
		Use: "delete", Aliases: []string{"del", "rm", "d"}, Short: "Delete a pre-auth key (nodes it registered stay)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if delID == 0 {
				return errors.New("--id is required")
			}
			if err := a.call("DELETE", "/api/v1/preauthkey?id="+delID.String(), nil, nil); err != nil {
				return err
			}
			return a.printHS(hsEmpty{}, func(w io.Writer) { fmt.Fprintln(w, "Key deleted") })
		},
	}
	del.Flags().Uint64VarP((*uint64)(&delID), "id", "i", 0, "key ID")
	cmd.AddCommand(create, list, expire, del)
	return cmd
}

func (a *app) nodesCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "nodes", Aliases: []string{"node", "machines"}, Short: "Manage nodes"}
	var user string
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls", "show"}, Short: "List nodes", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/api/v1/node"
			if user != "" {
				path += "?user=" + url.QueryEscape(user)
			}
			var out struct {
				Nodes           []api.Node `json:"nodes"`
				RequireApproval bool       `json:"requireApproval"`
			}
			if err := a.call("GET", path, nil, &out); err != nil {
				return err
			}
			return a.print(a.hsNodesFrom(out.Nodes), func(w *tabwriter.Writer) {
				// Headscale 0.29's columns, keys in their short form, and a
				// last column "Approved" when device approval is on or a
				// node waits for it: otherwise the table is Headscale's.
				approval := out.RequireApproval || slices.ContainsFunc(out.Nodes, func(n api.Node) bool { return !n.Approved })
				header := "ID\tHostname\tName\tMachineKey\tNodeKey\tUser\tTags\tIP addresses\tEphemeral\tLast seen\tExpiration\tConnected\tExpired"
				if approval {
					header += "\tApproved"
				}
				fmt.Fprintln(w, header)
				now := time.Now()
				for _, n := range out.Nodes {
					owner := "tagged-devices"
					if n.User != nil {
						owner = n.User.Name
					}
					expired := false
					if t, err := time.Parse(time.RFC3339Nano, deref(n.Expiry)); err == nil && !t.After(now) {
						expired = true
					}
					conn := "offline"
					if n.Online {
						conn = "online"
					}
					exp := "N/A"
					if n.Expiry != nil {
						exp = ts(*n.Expiry)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%v\t%s\t%s\t%s\t%s", n.ID, n.Name, n.GivenName,
						shortKey(new(key.MachinePublic), n.MachineKey), shortKey(new(key.NodePublic), n.NodeKey), owner, strings.Join(n.Tags, ","),
						strings.Join(n.IPAddresses, ", "), n.Ephemeral, ts(deref(n.LastSeen)), exp, conn, yesNo(expired))
					if approval {
						fmt.Fprintf(w, "\t%s", yesNo(n.Approved))
					}
					fmt.Fprintln(w)
				}
			})
		},
	}
	list.Flags().StringVarP(&user, "user", "u", "", "only nodes of this user (name or ID)")

	nodeCmd := func(use, short string, aliases []string, run func(id string, args []string) (any, string, error), setup func(*cobra.Command)) *cobra.Command {
		var nid ids.NodeID
		c := &cobra.Command{Use: use, Aliases: aliases, Short: short,
			RunE: func(cmd *cobra.Command, args []string) error {
				if nid == 0 {
					return errors.New("--identifier/-i (node ID) is required")
				}
				v, msg, err := run(nid.String(), args)
				if err != nil {
					return err
				}
				return a.printHS(v, func(w io.Writer) { fmt.Fprintln(w, msg) })
			}}
		c.Flags().Uint64VarP((*uint64)(&nid), "identifier", "i", 0, "node ID")
		if setup != nil {
			setup(c)
		}
		return c
	}
	type nodeOut struct {
		Node api.Node `json:"node"`
	}
	del := nodeCmd("delete", "Delete a node", []string{"del"}, func(id string, _ []string) (any, string, error) {
		if !a.confirm("Delete node " + id + "?") {
			return nil, "", errors.New("aborted")
		}
		err := a.call("DELETE", "/api/v1/node/"+id, nil, nil)
		return map[string]string{"Result": "Node deleted"}, "Node deleted", err
	}, func(c *cobra.Command) { c.Args = cobra.NoArgs })
	var expiry string
	var disable bool
	expire := nodeCmd("expire", "Expire a node's key now, at --expiry, or never (--disable)", []string{"logout", "exp", "e"}, func(id string, _ []string) (any, string, error) {
		body := map[string]any{"disableExpiry": disable}
		if expiry != "" {
			if _, err := time.Parse(time.RFC3339, expiry); err != nil {
				return nil, "", fmt.Errorf("--expiry must be an RFC 3339 time: %v", err)
			}
			body["expiry"] = expiry
		}
		var out nodeOut
		err := a.call("POST", "/api/v1/node/"+id+"/expire", body, &out)
		return a.hsNodeOf(out.Node), "Node expiry updated", err
	}, func(c *cobra.Command) {
		c.Args = cobra.NoArgs
		c.Flags().StringVarP(&expiry, "expiry", "e", "", "expire at this RFC 3339 time instead of now")
		c.Flags().BoolVarP(&disable, "disable", "d", false, "never expire")
	})
	rename := nodeCmd("rename NEW_NAME", "Change a node's MagicDNS name", nil, func(id string, args []string) (any, string, error) {
		var out nodeOut
		err := a.call("POST", "/api/v1/node/"+id+"/rename/"+url.PathEscape(args[0]), nil, &out)
		return a.hsNodeOf(out.Node), "Node renamed", err
	}, func(c *cobra.Command) { c.Args = cobra.ExactArgs(1) })
	var tags []string
	tag := nodeCmd("tag", "Set a node's tags (replaces them)", []string{"tags", "t"}, func(id string, _ []string) (any, string, error) {
		var out nodeOut
		err := a.call("POST", "/api/v1/node/"+id+"/tags", map[string]any{"tags": tags}, &out)
		return a.hsNodeOf(out.Node), "Node tagged", err
	}, func(c *cobra.Command) {
		c.Args = cobra.NoArgs
		c.Flags().StringSliceVarP(&tags, "tags", "t", nil, "tags, comma-separated (tag:name)")
	})
	var routes []string
	approve := nodeCmd("approve-routes", "Set the routes a node may serve (replaces them; \"\" clears)", nil, func(id string, _ []string) (any, string, error) {
		clean := []string{}
		for _, r := range routes {
			if r = strings.TrimSpace(r); r != "" {
				clean = append(clean, r)
			}
		}
		var out nodeOut
		err := a.call("POST", "/api/v1/node/"+id+"/approve_routes", map[string]any{"routes": clean}, &out)
		return a.hsNodeOf(out.Node), "Node updated", err
	}, func(c *cobra.Command) {
		c.Args = cobra.NoArgs
		c.Flags().StringSliceVarP(&routes, "routes", "r", nil, "routes, comma-separated CIDR prefixes (0.0.0.0/0 or ::/0 approves the exit node)")
	})
	approveNode := nodeCmd("approve", "Approve a node waiting for device approval (this server's extension)", nil, func(id string, _ []string) (any, string, error) {
		var out nodeOut
		err := a.call("POST", "/api/v1/node/"+id+"/approve", nil, &out)
		return a.hsNodeOf(out.Node), "Node approved", err
	}, func(c *cobra.Command) {
		c.Args = cobra.NoArgs
		c.Long = "approve lets a node registered while node.require_approval is on join the tailnet: until then it has no\n" +
			"peers and no node sees it (tailscale status says the machine needs authorisation). Device approval is\n" +
			"this server's extension; Headscale has no such command. Nodes registered with a tagged pre-auth key,\n" +
			"and nodes that existed when the setting was turned on, need no approval; approving one changes nothing."
	})
	var routesOf ids.NodeID
	listRoutes := &cobra.Command{
		Use: "list-routes", Aliases: []string{"lsr", "routes"}, Short: "List nodes' approved, advertised and served routes", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var nodes []api.Node
			if routesOf != 0 {
				var out nodeOut
				if err := a.call("GET", "/api/v1/node/"+routesOf.String(), nil, &out); err != nil {
					return err
				}
				nodes = append(nodes, out.Node)
			} else {
				var out struct {
					Nodes []api.Node `json:"nodes"`
				}
				if err := a.call("GET", "/api/v1/node", nil, &out); err != nil {
					return err
				}
				for _, n := range out.Nodes {
					if len(n.ApprovedRoutes)+len(n.AvailableRoutes)+len(n.SubnetRoutes) > 0 {
						nodes = append(nodes, n)
					}
				}
			}
			return a.print(a.hsNodesFrom(nodes), func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tHostname\tApproved\tAvailable\tServing (Primary)")
				for _, n := range nodes {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", n.ID, n.GivenName, strings.Join(n.ApprovedRoutes, ", "),
						strings.Join(n.AvailableRoutes, ", "), strings.Join(n.SubnetRoutes, ", "))
				}
			})
		},
	}
	listRoutes.Flags().Uint64VarP((*uint64)(&routesOf), "identifier", "i", 0, "only this node (ID)")
	cmd.AddCommand(list, del, expire, rename, tag, approve, approveNode, listRoutes)
	cmd.AddCommand(a.nodesCompatCmds()...)
	return cmd
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// shortKey is a key's short form as Headscale's tables print it ("[abcde]"),
// or "" when text does not hold such a key.
func shortKey(k interface {
	UnmarshalText([]byte) error
	ShortString() string
}, text string) string {
	if k.UnmarshalText([]byte(text)) != nil {
		return ""
	}
	return k.ShortString()
}

// yesNo prints a flag as Headscale's tables do.
func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// usersTable prints users with Headscale's columns, and a last column
// "Groups" with each user's identity-provider groups (comma-separated)
// when any listed user has some: without OIDC groups the table is
// Headscale's.
func usersTable(w io.Writer, users []api.User) {
	groups := slices.ContainsFunc(users, func(u api.User) bool { return len(u.ProviderGroups) > 0 })
	header := "ID\tName\tUsername\tEmail\tCreated"
	if groups {
		header += "\tGroups"
	}
	fmt.Fprintln(w, header)
	for _, u := range users {
		row := fmt.Sprintf("%s\t%s\t%s\t%s\t%s", u.ID, u.DisplayName, u.Name, u.Email, ts(u.CreatedAt))
		if groups {
			row += "\t" + strings.Join(u.ProviderGroups, ",")
		}
		fmt.Fprintln(w, row)
	}
}
