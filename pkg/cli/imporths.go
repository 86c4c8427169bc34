package cli

import (
	"fmt"
	"io"

	"github.com/hsctl/headscale/pkg/hsimport"
	"github.com/hsctl/headscale/pkg/unixsock"
	"github.com/spf13/cobra"
)

func (a *app) dbCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "db",
		Short: "Work on the database: move it between SQLite and PostgreSQL, take over a Headscale database",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(a.importHeadscaleCmd(), a.dbMigrateCmd())
	return cmd
}

func (a *app) importHeadscaleCmd() *cobra.Command {
	var from string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "import-headscale --from PATH [--dry-run]",
		Short: "Convert a Headscale 0.23-0.29 SQLite database into this server's (only while the server is stopped)",
		Long: `import-headscale reads the Headscale database at --from (never writing it) and converts its users, nodes,
pre-auth keys, API keys, policy and route IDs into the configured database, keeping every ID. It is what the
server does by itself when it starts on a Headscale database, for the cases where the two are different files.

--dry-run reads and converts, prints the report and writes nothing. Without it, the configured database must be
missing or empty and the server stopped; the report is also written beside the database as
<database>.headscale-<version>.report.txt. When --from is the configured database itself, it is taken over in
place as at start: a verified copy <database>.headscale-<version> is kept beside it.

The report counts, per kind of row, what was read, converted, changed and skipped, and names each row that was
changed or skipped with the reason (-o json prints it as an object). A Headscale release outside 0.23-0.29 or a
damaged database is refused, and so is a current policy that does not compile when policy.mode is database.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := a.loadConfig()
			if err != nil {
				return err
			}
			if cfg.Database.Type != "sqlite" {
				return fmt.Errorf("import-headscale writes database.type sqlite; this config has %s", cfg.Database.Type)
			}
			if !dryRun {
				if unixsock.Answers(cfg.UnixSocket) {
					return fmt.Errorf("headscale is running (it answers on %s); stop it first: systemctl stop headscale", cfg.UnixSocket)
				}
			}
			rep, err := hsimport.Import(cmd.Context(), hsimport.ImportOptions{
				From:    from,
				Path:    cfg.Database.SQLite.Path,
				DryRun:  dryRun,
				Socket:  cfg.UnixSocket,
				Convert: hsimport.Options{PolicyMode: cfg.Policy.Mode, V4: cfg.Prefixes.V4, V6: cfg.Prefixes.V6},
			})
			if rep != nil {
				if perr := a.printHS(rep, func(w io.Writer) {
					io.WriteString(w, rep.Text())
					if dryRun && err == nil {
						io.WriteString(w, "\ndry run: nothing was written\n")
					}
				}); perr != nil && err == nil {
					err = perr
				}
			}
			return err
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "the Headscale SQLite database to read (required)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be converted and write nothing")
	cmd.MarkFlagRequired("from")
	return cmd
}
