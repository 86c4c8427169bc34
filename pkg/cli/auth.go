package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// authCmd is `headscale auth approve|reject --auth-id ID`: resolving a
// pending SSH check, whose auth ID the connecting user sees in their SSH
// client and the server logs.
func (a *app) authCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "auth",
		Short: "Approve or reject pending authentications (SSH checks)",
		Long: `A policy SSH rule with "action": "check" holds each matching connection until an admin
approves it. The user's SSH client shows the auth ID, and the server logs it ("SSH check",
outcome=held). Approving also lets later connections from the same source node to the same
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
	cmd.AddCommand(
		verb("approve", "approved", "Approve a pending authentication (an SSH check)"),
		verb("reject", "rejected", "Reject a pending authentication (an SSH check)"),
	)
	return cmd
}
