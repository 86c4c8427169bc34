package cli

// Verbs existing Headscale runbooks call, with Headscale's flags:
// `generate private-key`, `debug create-node`, `nodes register`,
// `nodes move` and `nodes backfillips`. They print Headscale's shapes
// (hsshape.go). register completes a pending web registration;
// create-node (a fake node waiting for registration) is refused.

import (
	"errors"
	"fmt"
	"io"
	"net/url"

	"github.com/hsctl/headscale/pkg/api"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/spf13/cobra"
	"tailscale.com/types/key"
)

func (a *app) generateCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "generate", Aliases: []string{"gen"}, Short: "Generate keys (no server needed)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "private-key",
		Short: "Generate a private key for the headscale server (privkey:<hex>, the form of noise.private_key_path)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			text, err := key.NewMachine().MarshalText()
			if err != nil {
				return fmt.Errorf("encoding the private key: %w", err)
			}
			return a.printHS(map[string]string{"private_key": string(text)}, func(w io.Writer) { fmt.Fprintln(w, string(text)) })
		},
	})
	return cmd
}

func (a *app) debugCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "debug", Short: "Debugging and testing commands"}
	var name, user, regKey string
	var routes []string
	create := &cobra.Command{
		Use:   "create-node",
		Short: "Create a fake node waiting for `auth register` (not supported: register a real client)",
		Long: "create-node makes, in Headscale, a fake node waiting for its web registration. This server registers\n" +
			"only real clients, so it refuses it (exit 1): run `tailscale up --login-server URL` on the machine and\n" +
			"`headscale nodes register`, or use a pre-auth key.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			body := map[string]any{"user": user, "key": regKey, "name": name, "routes": routes}
			var out struct {
				Node api.Node `json:"node"`
			}
			if err := a.call("POST", "/api/v1/debug/node", body, &out); err != nil {
				return err
			}
			return a.printHS(a.hsNodeOf(out.Node), func(w io.Writer) { fmt.Fprintln(w, "Node created") })
		},
	}
	create.Flags().StringVar(&name, "name", "", "node name")
	create.Flags().StringVarP(&user, "user", "u", "", "user")
	create.Flags().StringVarP(&regKey, "key", "k", "", "registration ID (the key a pending registration shows)")
	create.Flags().StringSliceVarP(&routes, "route", "r", nil, "routes to advertise (comma-separated or repeated)")
	for _, f := range []string{"name", "user", "key"} {
		create.MarkFlagRequired(f)
	}
	cmd.AddCommand(create)
	return cmd
}

// nodesCompatCmds are the `nodes` verbs runbooks call: register, move,
// backfillips.
func (a *app) nodesCompatCmds() []*cobra.Command {
	var regUser, regKey string
	register := &cobra.Command{
		Use:   "register",
		Short: "Register the machine of a pending web registration for a user (as `auth register`)",
		Long: "register completes the web registration a machine started with `tailscale up --login-server URL`\n" +
			"without a pre-auth key (`--key` is the auth ID that ends the URL it printed, as the register page shows)\n" +
			"and gives the node to --user; the waiting machine is logged in at once. Auth IDs are single use and\n" +
			"expire after 15 minutes. Tags it advertises are allowed only if the user owns them under tagOwners.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Node api.Node `json:"node"`
			}
			q := url.Values{"user": {regUser}, "key": {regKey}}
			if err := a.call("POST", "/api/v1/node/register?"+q.Encode(), nil, &out); err != nil {
				return err
			}
			return a.printHS(a.hsNodeOf(out.Node), func(w io.Writer) { fmt.Fprintf(w, "Node %s registered\n", out.Node.GivenName) })
		},
	}
	register.Flags().StringVarP(&regUser, "user", "u", "", "user the node is given to (name)")
	register.Flags().StringVarP(&regKey, "key", "k", "", "auth ID of the pending registration (the end of the URL `tailscale up` printed)")
	namespaceAlias(register, &regUser)
	register.MarkFlagRequired("key")

	var moveID ids.NodeID
	var moveUser string
	move := &cobra.Command{
		Use:     "move",
		Aliases: []string{"mv"},
		Short:   "Move a node to another user (tagged nodes belong to their tags and cannot be moved)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Node api.Node `json:"node"`
			}
			if err := a.call("POST", "/api/v1/node/"+moveID.String()+"/user", map[string]string{"user": moveUser}, &out); err != nil {
				return err
			}
			return a.printHS(a.hsNodeOf(out.Node), func(w io.Writer) { fmt.Fprintln(w, "Node moved to another user") })
		},
	}
	move.Flags().Uint64VarP((*uint64)(&moveID), "identifier", "i", 0, "node ID")
	move.Flags().StringVarP(&moveUser, "user", "u", "", "new owner, by name or ID")
	namespaceAlias(move, &moveUser)
	move.MarkFlagRequired("identifier")

	backfill := &cobra.Command{
		Use:   "backfillips",
		Short: "Give nodes an address of every configured family and drop addresses of families no longer configured",
		Long: "backfillips brings every node's addresses in line with the configured prefixes: a node without an\n" +
			"address of a configured family (prefixes.v4, prefixes.v6) gets one, and an address of a family that is no\n" +
			"longer configured is removed. Peers hear of the new addresses at once. It asks for confirmation unless\n" +
			"--force is given; each change is printed.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !a.confirm("Are you sure that you want to assign/remove IPs to/from nodes?") {
				return errors.New("aborted")
			}
			var out struct {
				Changes []string `json:"changes"`
			}
			if err := a.call("POST", "/api/v1/node/backfillips?confirmed=true", nil, &out); err != nil {
				return err
			}
			return a.printHS(hsBackfill{Changes: out.Changes}, func(w io.Writer) {
				for _, c := range out.Changes {
					fmt.Fprintln(w, c)
				}
				if len(out.Changes) == 0 {
					fmt.Fprintln(w, "No node needed a change")
				}
				fmt.Fprintln(w, "Node IPs backfilled successfully")
			})
		},
	}
	return []*cobra.Command{register, move, backfill}
}

// namespaceAlias adds Headscale's hidden -n/--namespace (the name users
// had before 0.23) as another way to give --user, which is then required
// in one of the two forms. (Not marked deprecated: pflag would print the
// notice on stdout, into -o json.)
func namespaceAlias(cmd *cobra.Command, user *string) {
	cmd.Flags().StringVarP(user, "namespace", "n", "", "user (the name before Headscale 0.23)")
	cmd.Flags().Lookup("namespace").Hidden = true
	run := cmd.RunE
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if *user == "" {
			return errors.New(`required flag(s) "user" not set`)
		}
		return run(c, args)
	}
}
