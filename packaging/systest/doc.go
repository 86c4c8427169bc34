// Package systest holds the system test of the Debian package: it boots a
// real systemd in a container (debootstrap + systemd-nspawn, private
// network), installs the .deb built by `make deb`, and checks what a person
// on a VPS would: the service runs and is enabled, a real client registers,
// the journal shows the start, a stalled process is restarted by the
// watchdog, an upgrade backs up first and restarts, an upgrade into a
// broken config leaves the old process serving until `dpkg --configure -a`,
// and remove/purge do what they say. Then it installs a stand-in for
// Headscale's own package (same name, a shell script as its binary) with a
// real Headscale 0.27.1 deployment from ../shared and installs this package
// over it: the upgrade goes through, the server takes the database over
// and serves its nodes. Last, on a second machine that has Debian's
// postgresql running (a tree of its own, also cached), it sets the server
// up on PostgreSQL as the runbook says (peer authentication over
// /var/run/postgresql, no password), registers a client and restarts
// PostgreSQL under the running server, which must stay up and serve; the
// backup job then backs the PostgreSQL database up. It
// runs as root only; see systest_test.go.
package systest
