package migrations_test

import (
	"context"
	"strings"
	"testing"

	"github.com/nxcloud/nxcloud/migrations"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

func TestEmbeddedMigrationsAreWellFormed(t *testing.T) {
	all, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) < 4 {
		t.Fatalf("only %d migrations", len(all))
	}
	for _, m := range all {
		if _, shared := m.SQL[""]; shared {
			continue
		}
		if m.SQL[migrations.FlavorTimescale] == "" || m.SQL[migrations.FlavorPostgres] == "" {
			t.Errorf("migration %d lacks one flavor", m.Version)
		}
	}
}

// TestUpIsIdempotentAndRecordsTheFlavor: a second run applies nothing and the
// status lists every migration as applied with the storage flavor chosen once.
func TestUpIsIdempotentAndRecordsTheFlavor(t *testing.T) {
	env := tenanttest.New(t)
	ctx := context.Background()
	flavor, err := migrations.Up(ctx, env.DB.System, migrations.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if flavor != env.Flavor {
		t.Fatalf("flavor changed from %s to %s", env.Flavor, flavor)
	}
	got, err := migrations.Flavor(ctx, env.DB.System)
	if err != nil || got != flavor {
		t.Fatalf("Flavor() = %q, %v", got, err)
	}
	list, err := migrations.List(ctx, env.DB.System)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range list {
		if m.AppliedAt == nil {
			t.Errorf("migration %d %s pending after Up", m.Version, m.Name)
		}
	}
	other := migrations.FlavorTimescale
	if flavor == other {
		other = migrations.FlavorPostgres
	}
	want := map[string]string{migrations.FlavorTimescale: "on", migrations.FlavorPostgres: "off"}[other]
	if _, err := migrations.Up(ctx, env.DB.System, migrations.Options{Timescale: want}); err == nil ||
		!strings.Contains(err.Error(), "cannot change") {
		t.Fatalf("switching the flavor of a migrated database: err = %v, want a refusal", err)
	}
}

// TestEveryTenantTableHasRowLevelSecurity scans the catalog: a table with a
// tenant_id column must have RLS enabled and forced and a policy, unless it is
// on the short list of relations the app role cannot read at all (telemetry
// on TimescaleDB cannot carry RLS with compression; its reads go through the
// tenant-filtering functions of 0003).
func TestEveryTenantTableHasRowLevelSecurity(t *testing.T) {
	env := tenanttest.New(t)
	rows, err := env.DB.System.Query(context.Background(), `
		SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
		       EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid),
		       has_table_privilege('nxcloud_app', c.oid, 'SELECT')
		FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
		WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
		  AND NOT c.relispartition`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var name string
		var enabled, forced, policy, readable bool
		if err := rows.Scan(&name, &enabled, &forced, &policy, &readable); err != nil {
			t.Fatal(err)
		}
		n++
		if enabled && forced && policy {
			continue
		}
		if !readable && env.Flavor == migrations.FlavorTimescale {
			continue
		}
		t.Errorf("table %s has tenant_id but RLS enabled=%v forced=%v policy=%v (app can read: %v)", name, enabled, forced, policy, readable)
	}
	if n < 8 {
		t.Fatalf("only %d tenant tables found; is the query right?", n)
	}
	// Partitions of telemetry must not be readable by the app role (RLS
	// policies are not inherited by partitions).
	var leaked int
	if err := env.DB.System.QueryRow(context.Background(), `
		SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = 'public' AND c.relispartition AND has_table_privilege('nxcloud_app', c.oid, 'SELECT')`).Scan(&leaked); err != nil {
		t.Fatal(err)
	}
	if leaked > 0 {
		t.Fatalf("%d partitions are readable by nxcloud_app", leaked)
	}
	// The app role must neither own tables nor bypass RLS.
	var super, bypass bool
	if err := env.DB.System.QueryRow(context.Background(), `SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'nxcloud_app'`).Scan(&super, &bypass); err != nil {
		t.Fatal(err)
	}
	if super || bypass {
		t.Fatal("nxcloud_app is superuser or bypasses RLS")
	}
	var owned int
	if err := env.DB.System.QueryRow(context.Background(), `SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = 'nxcloud_app'`).Scan(&owned); err != nil {
		t.Fatal(err)
	}
	if owned > 0 {
		t.Fatalf("nxcloud_app owns %d relations", owned)
	}
}
