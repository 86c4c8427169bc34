package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/hsctl/headscale/pkg/policy"
	"github.com/hsctl/headscale/pkg/server"
	"github.com/spf13/cobra"
)

// bypassFlag is Headscale's flag for working on the database while the
// server is stopped (policy get, set and check).
const bypassFlag = "bypass-grpc-and-access-database-directly"

// offline opens the configured database of a stopped server, runs fn on it
// and closes it.
func (a *app) offline(ctx context.Context, fn func(*server.Offline) error) error {
	cfg, _, err := a.loadConfig()
	if err != nil {
		return err
	}
	o, err := server.OpenOffline(ctx, cfg)
	if err != nil {
		return err
	}
	err = fn(o)
	if cerr := o.Close(); err == nil {
		err = cerr
	}
	return err
}

func (a *app) policyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Aliases: []string{"acl", "acls"}, Short: "Show, check and set the access-control policy"}
	var getBypass, setBypass, checkBypass bool

	get := &cobra.Command{
		Use:     "get",
		Aliases: []string{"show", "view", "fetch"},
		Short:   "Print the policy in force",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Policy    string `json:"policy"`
				UpdatedAt string `json:"updatedAt,omitempty"`
			}
			if getBypass {
				err := a.offline(cmd.Context(), func(o *server.Offline) (err error) {
					out.Policy, err = o.Policy(cmd.Context())
					return err
				})
				if err != nil {
					return err
				}
			} else if err := a.call("GET", "/api/v1/policy", nil, &out); err != nil {
				return err
			}
			// Headscale prints the policy text whatever -o says.
			if out.Policy == "" {
				if a.output != "" {
					return a.print(hsEmpty{}, nil)
				}
				fmt.Fprintln(a.env.Stdout, "no policy: every node may reach every other")
				return nil
			}
			fmt.Fprint(a.env.Stdout, out.Policy)
			if out.Policy[len(out.Policy)-1] != '\n' {
				fmt.Fprintln(a.env.Stdout)
			}
			return nil
		},
	}

	var setFile string
	set := &cobra.Command{
		Use:     "set",
		Aliases: []string{"put", "update"},
		Short:   "Check a policy file and put it in force (policy.mode database)",
		Long: `set sends the policy file to the running server, which parses it, compiles it against the current
users and nodes and runs its tests; only if all of that passes is it stored and put in force. A rejected policy
leaves the one in force unchanged. In policy.mode file, edit the file and run ` + "`systemctl reload headscale`" + ` instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			text, err := readPolicyFile(setFile)
			if err != nil {
				return err
			}
			if _, err := policy.Parse([]byte(text)); err != nil {
				return policy.InFile(setFile, err)
			}
			var out struct {
				UpdatedAt string `json:"updatedAt"`
			}
			if setBypass {
				err := a.offline(cmd.Context(), func(o *server.Offline) error {
					if mode := o.Mode(); mode != "database" {
						return fmt.Errorf("policy.mode is %q: the policy is read from its file; edit the file instead", mode)
					}
					at, err := o.State.StorePolicy(cmd.Context(), text)
					out.UpdatedAt = at.UTC().Format(time.RFC3339Nano)
					return err
				})
				if err != nil {
					return err
				}
			} else if err := a.call("PUT", "/api/v1/policy", map[string]string{"policy": text}, &out); err != nil {
				return err
			}
			return a.print(map[string]string{"updatedAt": out.UpdatedAt}, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "Policy updated.")
			})
		},
	}
	set.Flags().StringVarP(&setFile, "file", "f", "", "policy file (HuJSON)")
	set.MarkFlagRequired("file")

	var checkFile string
	check := &cobra.Command{
		Use:   "check",
		Short: "Check a policy file without changing anything",
		Long: `check parses the policy file and reports every problem as line:column: reason. When the server is
running it also compiles the policy against the live users and nodes and runs its tests; when it is not, only the
file itself is checked and the output says so.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			text, err := readPolicyFile(checkFile)
			if err != nil {
				return err
			}
			if _, err := policy.Parse([]byte(text)); err != nil {
				return policy.InFile(checkFile, err)
			}
			if checkBypass {
				err := a.offline(cmd.Context(), func(o *server.Offline) error {
					_, err := o.State.CheckPolicyText(text)
					return err
				})
				if err != nil {
					return fmt.Errorf("%s: %w", checkFile, err)
				}
				fmt.Fprintln(a.env.Stdout, "Policy is valid")
				return nil
			}
			err = a.call("POST", "/api/v1/policy/check", map[string]string{"policy": text}, nil)
			var nr errNotRunning
			switch {
			case errors.As(err, &nr):
				fmt.Fprintf(a.env.Stdout, "Policy is valid as a file: %s (the server is not running, so users, nodes and tests were not checked; --%s checks them against the database)\n", checkFile, bypassFlag)
				return nil
			case err != nil:
				return fmt.Errorf("%s: %w", checkFile, err)
			}
			fmt.Fprintln(a.env.Stdout, "Policy is valid")
			return nil
		},
	}
	check.Flags().StringVarP(&checkFile, "file", "f", "", "policy file (HuJSON)")
	check.MarkFlagRequired("file")
	get.Flags().BoolVar(&getBypass, bypassFlag, false, "read the database directly; the server must be stopped")
	set.Flags().BoolVar(&setBypass, bypassFlag, false, "write the database directly (compiled against its users and nodes first); the server must be stopped")
	check.Flags().BoolVar(&checkBypass, bypassFlag, false, "open the database directly to check against its users and nodes and run the tests; the server must be stopped")

	cmd.AddCommand(get, set, check)
	return cmd
}

func readPolicyFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading policy: %w", err)
	}
	return string(b), nil
}
