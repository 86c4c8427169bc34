package cli

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"text/tabwriter"

	"github.com/hsctl/headscale/pkg/api"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/spf13/cobra"
)

// routesCmd is Headscale 0.23–0.25's `routes` group: routes by ID, on
// today's model (a route is one prefix a node announces or has approved;
// enabled means approved). `nodes list-routes` and `nodes approve-routes`
// are today's verbs for the same.
func (a *app) routesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use: "routes", Aliases: []string{"r", "route"},
		Short: "Manage routes by ID, as Headscale 0.23–0.25 did (today: nodes list-routes, nodes approve-routes)",
		Long: "routes lists every prefix a node announces or has approved, each with an ID that stays the same, and\n" +
			"enables (approves) or disables it by that ID, as Headscale 0.23–0.25 did. Enabling or disabling an exit\n" +
			"route (0.0.0.0/0 or ::/0) does both. Primary is the node peers route a subnet through (\"-\" for exit routes).",
	}
	var nodeID ids.NodeID
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls", "show"}, Short: "List routes (all nodes, or one with -i)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/api/v1/routes"
			if nodeID != 0 {
				path = "/api/v1/node/" + nodeID.String() + "/routes"
			}
			var out struct {
				Routes []api.Route `json:"routes"`
			}
			if err := a.call("GET", path, nil, &out); err != nil {
				return err
			}
			// Headscale prints the repeated field: null when empty.
			var hs []hsRoute
			for _, r := range out.Routes {
				n := hsNodeFrom(r.Node)
				hs = append(hs, hsRoute{Id: hsID(r.ID), Node: n, Prefix: r.Prefix, Advertised: r.Advertised, Enabled: r.Enabled,
					IsPrimary: r.IsPrimary, CreatedAt: hsTime(r.CreatedAt), UpdatedAt: hsTime(r.UpdatedAt)})
			}
			return a.printHS(hs, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tNode\tPrefix\tAdvertised\tEnabled\tPrimary")
				for _, r := range out.Routes {
					primary := strconv.FormatBool(r.IsPrimary)
					if p, err := netip.ParsePrefix(r.Prefix); err == nil && p.Bits() == 0 {
						primary = "-"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%v\t%s\n", r.ID, r.Node.GivenName, r.Prefix, r.Advertised, r.Enabled, primary)
				}
				tw.Flush()
			})
		},
	}
	list.Flags().Uint64VarP((*uint64)(&nodeID), "identifier", "i", 0, "node ID (0: every node)")
	byID := func(use, short, method, suffix string) *cobra.Command {
		var rid ids.RouteID
		c := &cobra.Command{
			Use: use, Short: short, Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if err := a.call(method, "/api/v1/routes/"+rid.String()+suffix, nil, nil); err != nil {
					return err
				}
				// Headscale prints nothing without -o, and the empty
				// response message with it.
				return a.printHS(struct{}{}, func(io.Writer) {})
			},
		}
		c.Flags().Uint64VarP((*uint64)(&rid), "route", "r", 0, "route ID (from routes list)")
		c.MarkFlagRequired("route")
		return c
	}
	cmd.AddCommand(list,
		byID("enable", "Enable (approve) a route; an exit route enables both 0.0.0.0/0 and ::/0", "POST", "/enable"),
		byID("disable", "Disable (unapprove) a route; an exit route disables both 0.0.0.0/0 and ::/0", "POST", "/disable"),
		byID("delete", "Delete a route: disable it and forget its ID (a prefix still announced is listed again with a new ID)", "DELETE", ""))
	return cmd
}
