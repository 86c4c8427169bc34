package cli

import (
	"fmt"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/hsctl/headscale/pkg/config"
	"github.com/spf13/cobra"
)

// apiKey is an API key as the API lists it.
type apiKey struct {
	ID         string `json:"id"`
	Prefix     string `json:"prefix"`
	Expiration string `json:"expiration"`
	CreatedAt  string `json:"createdAt"`
	LastSeen   string `json:"lastSeen"`
}

func (a *app) apikeysCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "apikeys", Aliases: []string{"apikey", "api"}, Short: "Manage API keys for the REST API and the remote CLI"}

	var expiration string
	create := &cobra.Command{
		Use: "create", Aliases: []string{"c", "new"}, Short: "Create an API key (shown in full only now)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := config.ParseDuration(expiration)
			if err != nil || d <= 0 {
				return fmt.Errorf("--expiration %q: want a positive duration such as 24h or 90d", expiration)
			}
			body := map[string]string{"expiration": time.Now().Add(d).UTC().Format(time.RFC3339)}
			var out struct {
				APIKey string `json:"apiKey"`
			}
			if err := a.call("POST", "/api/v1/apikey", body, &out); err != nil {
				return err
			}
			return a.print(map[string]string{"apiKey": out.APIKey}, func(w *tabwriter.Writer) { fmt.Fprintln(w, out.APIKey) })
		},
	}
	create.Flags().StringVarP(&expiration, "expiration", "e", "90d", "how long the key is valid (e.g. 24h, 90d)")

	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls", "show"}, Short: "List API keys (prefixes only)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Keys []apiKey `json:"apiKeys"`
			}
			if err := a.call("GET", "/api/v1/apikey", nil, &out); err != nil {
				return err
			}
			return a.print(out.Keys, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tPrefix\tExpiration\tCreated\tLast seen")
				for _, k := range out.Keys {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", k.ID, k.Prefix, ts(k.Expiration), ts(k.CreatedAt), ts(k.LastSeen))
				}
			})
		},
	}

	var expPrefix, expID string
	expire := &cobra.Command{
		Use: "expire", Aliases: []string{"revoke"}, Short: "Expire an API key now", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if expPrefix == "" && expID == "" {
				return fmt.Errorf("give --prefix or --id")
			}
			if err := a.call("POST", "/api/v1/apikey/expire", map[string]string{"prefix": expPrefix, "id": expID}, nil); err != nil {
				return err
			}
			return a.print(map[string]string{}, func(w *tabwriter.Writer) { fmt.Fprintln(w, "key expired") })
		},
	}
	expire.Flags().StringVarP(&expPrefix, "prefix", "p", "", "the key's prefix")
	expire.Flags().StringVar(&expID, "id", "", "the key's ID")

	var delPrefix, delID string
	del := &cobra.Command{
		Use: "delete", Aliases: []string{"remove", "rm"}, Short: "Delete an API key", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if delPrefix == "" && delID == "" {
				return fmt.Errorf("give --prefix or --id")
			}
			p := delPrefix
			if p == "" {
				p = "-"
			}
			path := "/api/v1/apikey/" + url.PathEscape(p)
			if delID != "" {
				path += "?id=" + url.QueryEscape(delID)
			}
			if err := a.call("DELETE", path, nil, nil); err != nil {
				return err
			}
			return a.print(map[string]string{}, func(w *tabwriter.Writer) { fmt.Fprintln(w, "key deleted") })
		},
	}
	del.Flags().StringVarP(&delPrefix, "prefix", "p", "", "the key's prefix")
	del.Flags().StringVar(&delID, "id", "", "the key's ID")

	cmd.AddCommand(create, list, expire, del)
	return cmd
}
