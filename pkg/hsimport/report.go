package hsimport

import (
	"fmt"
	"log/slog"
	"strings"
	"text/tabwriter"
)

// Log writes the report: one line per kind of row with its counts, then
// one warning per row that was changed or skipped (with the reason) and
// one info line per note.
func (r *Report) Log(log *slog.Logger) {
	for _, c := range r.Counts {
		log.Info("headscale import", "kind", c.Kind, "read", c.Read, "converted", c.Converted, "changed", c.Changed, "skipped", c.Skipped)
	}
	for _, e := range r.Entries {
		args := []any{"kind", e.Kind, "id", e.ID}
		if e.Name != "" {
			args = append(args, "name", e.Name)
		}
		args = append(args, "reason", e.Reason)
		switch e.Action {
		case Noted:
			log.Info("headscale import: note", args...)
		default:
			log.Warn("headscale import: row "+e.Action, args...)
		}
	}
	args := []any{"source", r.Source, "found", r.Release}
	if r.Copy != "" {
		args = append(args, "copy", r.Copy)
	}
	if r.ReportFile != "" {
		args = append(args, "report", r.ReportFile)
	}
	if r.Database != "" {
		args = append(args, "database", r.Database)
	}
	log.Info("headscale import finished", args...)
}

// Text is the report as a table, for the report file and the CLI.
func (r *Report) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Headscale import of %s\n", r.Source)
	fmt.Fprintf(&b, "found: %s\n", r.Release)
	if r.Copy != "" {
		fmt.Fprintf(&b, "copy of the original: %s\n", r.Copy)
	}
	if r.Database != "" {
		fmt.Fprintf(&b, "converted into: %s\n", r.Database)
	}
	b.WriteString("\n")
	w := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "KIND\tREAD\tCONVERTED\tCHANGED\tSKIPPED")
	for _, c := range r.Counts {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\n", c.Kind, c.Read, c.Converted, c.Changed, c.Skipped)
	}
	w.Flush()
	if len(r.Entries) > 0 {
		b.WriteString("\n")
		w = tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "KIND\tID\tNAME\tACTION\tREASON")
		for _, e := range r.Entries {
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\n", e.Kind, e.ID, e.Name, e.Action, e.Reason)
		}
		w.Flush()
	}
	return b.String()
}
