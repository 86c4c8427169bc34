# /etc/cron.d/headscale: backups and health checks for the headscale server.
#
# Backup: daily at 03:17 as user headscale into /var/lib/headscale/backups,
# keeping the newest 14 and none older than 30 days (see
# /usr/libexec/headscale/headscale-backup --help). headscale-backup.timer is
# the systemd alternative. Use one of the two. While that timer is active this
# line does nothing, and a lock on the backup directory keeps two runs from
# overlapping anyway. To turn this line off, comment it out.
#
# Health check: every 5 minutes as root (it needs systemctl). Cron mails any
# output, and --quiet keeps a healthy server silent, so mail arrives only on
# failure. It reports, and restarts nothing. For a restart on failure, use the
# commented line that has --restart instead. systemd already restarts a crashed
# or hung (watchdog) server by itself. --if-enabled keeps a deliberately
# disabled server quiet. Add --no-metrics if metrics_listen_addr is empty.
#
# This is a conffile: local edits survive upgrades.

SHELL=/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# m  h  dom mon dow  user       command
17   3  *   *   *    headscale  [ -x /usr/libexec/headscale/headscale-backup ] && ! systemctl --quiet is-active headscale-backup.timer 2>/dev/null && /usr/libexec/headscale/headscale-backup --quiet
*/5  *  *   *   *    root       [ -x /usr/libexec/headscale/headscale-healthcheck ] && /usr/libexec/headscale/headscale-healthcheck --quiet --if-enabled
#*/5 *  *   *   *    root       [ -x /usr/libexec/headscale/headscale-healthcheck ] && /usr/libexec/headscale/headscale-healthcheck --quiet --if-enabled --restart
