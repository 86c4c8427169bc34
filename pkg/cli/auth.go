package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/hsctl/headscale/pkg/api"
	"github.com/spf13/cobra"
)

// authCmd is `headscale auth register|approve|reject --auth-id ID`
// (Headscale 0.29): completing or refusing a web registration (the auth
// ID ends the URL `tailscale up` prints), and resolving a pending SSH
// check (the auth ID the connecting user sees in their SSH client).
func (a *app) authCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "auth",
		Short: "Register, approve or reject pending authentications (web registrations, SSH checks)",
		Long: `A machine that runs "tailscale up --login-server URL" without a pre-auth key prints a URL
ending in an auth ID (hskey-authreq-...); "auth register --auth-id ID --user USER" registers it
for USER (as "nodes register --user USER --key ID" does), "auth reject" refuses it. Auth IDs are
single use and expire after 15 minutes.

A policy SSH rule with "action": "check" holds each matching connection until an admin
approves it. The user's SSH client shows the auth ID; the server's log names the check by a
fingerprint of it ("SSH check", outcome=held, check=...), never the ID itself. Approving also lets later connections from the same source node to the same
destination node in at once for the rule's checkPeriod (default 12h).`,
	}
	verb := func(name, past, short string) *cobra.Command {
		var id string
		c := &cobra.Command{
			Use: name, Short: short, Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				id = strings.TrimSpace(id)
				if id == "" {
					return fmt.Errorf("--auth-id is required")
				}
				if err := a.call("POST", "/api/v1/auth/"+name, map[string]string{"authId": id}, nil); err != nil {
					return err
				}
				return a.print(map[string]string{}, func(w *tabwriter.Writer) {
					fmt.Fprintf(w, "Auth request %s %s\n", id, past)
				})
			},
		}
		c.Flags().StringVar(&id, "auth-id", "", "the auth ID to "+name+" (shown to the user and in the server log)")
		c.MarkFlagRequired("auth-id")
		return c
	}
	var regID, regUser string
	register := &cobra.Command{
		Use:   "register",
		Short: "Register the machine of a pending web registration for a user",
		Long: "register completes the web registration with auth ID --auth-id (the end of the URL `tailscale up`\n" +
			"printed) and gives the node to --user (a name or an ID); the waiting machine is logged in at once.\n" +
			"Tags it advertises (--advertise-tags) are allowed only if the user owns them under tagOwners.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			regID = strings.TrimSpace(regID)
			var out struct {
				Node api.Node `json:"node"`
			}
			if err := a.call("POST", "/api/v1/auth/register", map[string]string{"authId": regID, "user": regUser}, &out); err != nil {
				return err
			}
			return a.printHS(a.hsNodeOf(out.Node), func(w io.Writer) { fmt.Fprintf(w, "Node %s registered\n", out.Node.GivenName) })
		},
	}
	register.Flags().StringVar(&regID, "auth-id", "", "auth ID of the pending registration (the end of the URL `tailscale up` printed)")
	register.Flags().StringVarP(&regUser, "user", "u", "", "user the node is given to (name or ID)")
	register.MarkFlagRequired("auth-id")
	register.MarkFlagRequired("user")
	cmd.AddCommand(
		register,
		verb("approve", "approved", "Approve a pending SSH check (a web registration needs `auth register` with a user)"),
		verb("reject", "rejected", "Reject a pending web registration or SSH check"),
	)
	return cmd
}
