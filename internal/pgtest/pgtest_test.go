package pgtest

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestCluster starts a cluster, checks that it listens on nothing but its
// unix socket, that databases are separate and dropped after their test,
// that PasswordUser needs its password, and that Stop removes everything.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL server")
	}
	c := New()
	defer c.Stop()
	ctx := t.Context()

	var first Database
	t.Run("database", func(t *testing.T) {
		first = c.Database(t)
		conn, err := pgx.Connect(ctx, first.DSN())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var listen, fsync, user string
		if err := conn.QueryRow(ctx, `SELECT current_setting('listen_addresses'), current_setting('fsync'), current_user`).Scan(&listen, &fsync, &user); err != nil {
			t.Fatal(err)
		}
		if listen != "" || user != Superuser {
			t.Errorf("listen_addresses = %q, user %q; want no network address and %q", listen, user, Superuser)
		}
		if _, err := conn.Exec(ctx, `CREATE TABLE t (x int)`); err != nil {
			t.Fatal(err)
		}
		second := c.Database(t)
		if second.Name == first.Name {
			t.Fatalf("two databases named %q", first.Name)
		}
		conn2, err := pgx.Connect(ctx, second.DSN())
		if err != nil {
			t.Fatal(err)
		}
		defer conn2.Close(ctx)
		if _, err := conn2.Exec(ctx, `SELECT * FROM t`); err == nil {
			t.Error("a table of one test database is visible in another")
		}
	})
	t.Run("dropped", func(t *testing.T) {
		var n int
		admin, err := pgx.Connect(ctx, Database{Host: first.Host, Port: first.Port, Name: "postgres", User: Superuser}.DSN())
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close(ctx)
		if err := admin.QueryRow(ctx, `SELECT COUNT(*) FROM pg_database WHERE datname LIKE 'test\_%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%d test databases left after their test ended", n)
		}
	})
	t.Run("password", func(t *testing.T) {
		db := c.Database(t)
		base := "host=" + db.Host + " port=5432 dbname=" + db.Name + " user=" + PasswordUser + " sslmode=disable"
		_, err := pgx.Connect(ctx, base+" password=wrong-password")
		if err == nil || !strings.Contains(err.Error(), "password authentication failed") {
			t.Fatalf("wrong password: %v, want an authentication failure", err)
		}
		conn, err := pgx.Connect(ctx, base+" password="+PasswordUserPass)
		if err != nil {
			t.Fatalf("right password: %v", err)
		}
		conn.Close(ctx)
	})
	t.Run("restart", func(t *testing.T) {
		db := c.Database(t)
		conn, err := pgx.Connect(ctx, db.DSN())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, `CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)`); err != nil {
			t.Fatal(err)
		}
		if err := c.StopServer(); err != nil {
			t.Fatal(err)
		}
		if err := c.StopServer(); err == nil {
			t.Error("StopServer of a stopped server succeeded")
		}
		if _, err := conn.Exec(ctx, `SELECT 1`); err == nil {
			t.Error("a connection survived StopServer")
		}
		if _, err := pgx.Connect(ctx, db.DSN()); err == nil {
			t.Error("connected to a stopped server")
		}
		if err := c.StartServer(); err != nil {
			t.Fatal(err)
		}
		again, err := pgx.Connect(ctx, db.DSN())
		if err != nil {
			t.Fatal(err)
		}
		defer again.Close(ctx)
		var x int
		if err := again.QueryRow(ctx, `SELECT x FROM kept`).Scan(&x); err != nil || x != 7 {
			t.Fatalf("after the restart: %d, %v; want the row written before", x, err)
		}
	})

	dir := c.dir
	c.Stop()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cluster directory left after Stop: %v", err)
	}
	if err := c.Exec(context.Background(), "", "SELECT 1"); err == nil {
		t.Error("the server still answers after Stop")
	}
}

// TestStopUnused: stopping a cluster no test used starts nothing.
func TestStopUnused(t *testing.T) {
	c := New()
	c.Stop()
	if c.dir != "" || c.cmd != nil {
		t.Fatalf("Stop of an unused cluster started one (dir %q)", c.dir)
	}
}
