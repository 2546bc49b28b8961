// Package tenanttest gives tests a migrated database, Redis and fresh tenants:
// the real services `make test` starts (NXCLOUD_TEST_DATABASE_URL,
// NXCLOUD_TEST_REDIS_URL), never mocks.
package tenanttest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/nxcloud/nxcloud/migrations"
	"github.com/nxcloud/nxcloud/tenants"
)

// Env is what a test gets: both pools on a migrated database, Redis, and the
// tenant service.
type Env struct {
	DB      tenants.DB
	Redis   *redis.Client
	Tenants *tenants.Service
	Flavor  string
}

func need(t testing.TB, name string) string {
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: run the tests with `make test`, which starts PostgreSQL and Redis and sets it", name)
	}
	return v
}

// New connects to the test database (migrating it; concurrent packages are
// serialised by the migration lock) and Redis, and closes them when t ends.
func New(t testing.TB) *Env {
	t.Helper()
	ctx := context.Background()
	dbURL := need(t, "NXCLOUD_TEST_DATABASE_URL")
	sys, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatalf("test database: %v", err)
	}
	t.Cleanup(sys.Close)
	flavor, err := migrations.Up(ctx, sys, migrations.Options{Timescale: os.Getenv("NXCLOUD_TIMESCALEDB")})
	if err != nil {
		t.Fatalf("migrate test database: %v", err)
	}
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User("nxcloud_app")
	appURL := u.String()
	if v := os.Getenv("NXCLOUD_TEST_APP_DATABASE_URL"); v != "" {
		appURL = v
	}
	app, err := pgxpool.New(ctx, appURL)
	if err != nil {
		t.Fatalf("test database as nxcloud_app: %v", err)
	}
	t.Cleanup(app.Close)
	ropt, err := redis.ParseURL(need(t, "NXCLOUD_TEST_REDIS_URL"))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(ropt)
	t.Cleanup(func() { rdb.Close() })
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("test Redis: %v", err)
	}
	templates, err := tenants.Templates()
	if err != nil {
		t.Fatal(err)
	}
	svc := tenants.NewService(tenants.DB{System: sys, App: app}, templates, 200*time.Millisecond)
	if err := svc.LoadSectors(ctx); err != nil {
		t.Fatal(err)
	}
	return &Env{DB: tenants.DB{System: sys, App: app}, Redis: rdb, Tenants: svc, Flavor: flavor}
}

var seq atomic.Int64

var nonSlug = regexp.MustCompile(`[^a-z0-9]+`)

// Tenant is a fresh enterprise of the demo sector.
type Tenant struct {
	tenants.Tenant
	APIKey string
}

// Ctx returns a context scoped to the tenant.
func (t Tenant) Ctx() context.Context { return tenants.WithTenant(context.Background(), t.ID) }

// NewTenant creates an enterprise with a unique slug in the magnetic-materials
// sector.
func (e *Env) NewTenant(t testing.TB) Tenant {
	t.Helper()
	name := strings.Trim(nonSlug.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(name) > 30 {
		name = name[:30]
	}
	slug := strings.Trim(fmt.Sprintf("t-%s-%d-%s", name, seq.Add(1), uuid.NewString()[:8]), "-")
	tn, key, err := e.Tenants.CreateEnterprise(context.Background(), tenants.EnterpriseInput{
		Slug: slug, Name: "Test " + t.Name(), Sector: "magnetic-materials"})
	if err != nil {
		t.Fatalf("create tenant %s: %v", slug, err)
	}
	return Tenant{Tenant: tn, APIKey: key}
}

// Device registers a device of the given model in tenant tn with a known secret.
func (e *Env) Device(t testing.TB, tn Tenant, key, model string) (tenants.Device, string) {
	t.Helper()
	d, secret, err := e.Tenants.RegisterDevice(context.Background(), tn.ID, tenants.DeviceInput{Key: key, Model: model})
	if err != nil {
		t.Fatalf("register device %s: %v", key, err)
	}
	return d, secret
}
