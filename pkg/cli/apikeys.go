package cli

import (
	"fmt"
	"io"
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
			return a.printHS(out.APIKey, func(w io.Writer) { fmt.Fprintln(w, out.APIKey) })
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
			return a.print(hsList(out.Keys, hsApiKeyFrom), func(w *tabwriter.Writer) {
				// Headscale's columns.
				fmt.Fprintln(w, "ID\tPrefix\tExpiration\tCreated")
				for _, k := range out.Keys {
					exp := "-"
					if k.Expiration != "" {
						exp = ts(k.Expiration)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", k.ID, k.Prefix, exp, ts(k.CreatedAt))
				}
			})
		},
	}

	var expPrefix, expID string
	expire := &cobra.Command{
		Use: "expire", Aliases: []string{"revoke", "exp", "e"}, Short: "Expire an API key now (by --prefix or --id)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := onePrefixOrID(expPrefix, expID); err != nil {
				return err
			}
			if err := a.call("POST", "/api/v1/apikey/expire", map[string]string{"prefix": expPrefix, "id": expID}, nil); err != nil {
				return err
			}
			return a.printHS(hsEmpty{}, func(w io.Writer) { fmt.Fprintln(w, "key expired") })
		},
	}
	expire.Flags().StringVarP(&expPrefix, "prefix", "p", "", prefixHelp)
	expire.Flags().StringVarP(&expID, "id", "i", "", "the key's ID")

	var delPrefix, delID string
	del := &cobra.Command{
		Use: "delete", Aliases: []string{"remove", "del", "rm"}, Short: "Delete an API key (by --prefix or --id)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := onePrefixOrID(delPrefix, delID); err != nil {
				return err
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
			return a.printHS(hsEmpty{}, func(w io.Writer) { fmt.Fprintln(w, "key deleted") })
		},
	}
	del.Flags().StringVarP(&delPrefix, "prefix", "p", "", prefixHelp)
	del.Flags().StringVarP(&delID, "id", "i", "", "the key's ID")

	cmd.AddCommand(create, list, expire, del)
	return cmd
}

// hsApiKeyFrom converts an API key as the REST API lists it.
func hsApiKeyFrom(k apiKey) *hsApiKey {
	return &hsApiKey{Id: hsID(k.ID), Prefix: k.Prefix, Expiration: hsTime(k.Expiration), CreatedAt: hsTime(k.CreatedAt),
		LastSeen: hsTime(k.LastSeen)}
}

// prefixHelp lists the prefix forms apikeys expire|delete accept, those
// Headscale's releases print and accept.
const prefixHelp = "the key's prefix: as listed (hskey-api-XXXXXXXXXXXX-***), the 12 characters alone, or a legacy 7-character prefix"

// onePrefixOrID checks that exactly one of --prefix and --id was given.
func onePrefixOrID(prefix, id string) error {
	switch {
	case prefix == "" && id == "":
		return fmt.Errorf("give --prefix/-p or --id/-i")
	case prefix != "" && id != "":
		return fmt.Errorf("give either --prefix/-p or --id/-i, not both")
	}
	return nil
}
