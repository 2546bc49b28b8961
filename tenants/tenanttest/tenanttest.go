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
	svc.UseRedis(rdb)
	// Every httptest request comes from 192.0.2.1, and parallel test packages
	// share Redis: the per-address login limit would trip across tests. Tests
	// of that limit set their own.
	svc.LoginLimits.PerIP = 100000
	svc.UseRedisGrants(t.Context(), rdb, nil)
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

// Member is a user of an organisation, with the password it logs in with.
type Member struct {
	tenants.UserRef
	Password string
	Role     string
}

// Member adds a new user with role to the organisation org (for an
// enterprise, its tenant id).
func (e *Env) Member(t testing.TB, org uuid.UUID, role string) Member {
	t.Helper()
	email := fmt.Sprintf("%s-%d-%s@test.example", role, seq.Add(1), uuid.NewString()[:8])
	m := Member{Password: "pw-" + uuid.NewString(), Role: role}
	u, err := e.Tenants.EnsureMember(context.Background(), org, email, "Test "+role, m.Password, role)
	if err != nil {
		t.Fatalf("member %s: %v", email, err)
	}
	m.UserRef = u
	return m
}

// Session logs m in to org and returns the session token.
func (e *Env) Session(t testing.TB, m Member, org uuid.UUID) string {
	t.Helper()
	s, err := e.Tenants.Login(context.Background(), tenants.LoginInput{Email: m.Email, Password: m.Password, Org: org.String()}, tenants.Client{})
	if err != nil {
		t.Fatalf("log in %s: %v", m.Email, err)
	}
	return s.Token
}

// Org creates an organisation of kind (contractor, association, operator)
// and returns its id.
func (e *Env) Org(t testing.TB, kind string) uuid.UUID {
	t.Helper()
	o, err := e.Tenants.CreateOrg(context.Background(), tenants.Principal{}, tenants.OrgInput{
		Kind: kind, Name: fmt.Sprintf("Test %s %d", kind, seq.Add(1)), AdminEmail: fmt.Sprintf("admin-%d@test.example", seq.Add(1))})
	if err != nil {
		t.Fatalf("create %s: %v", kind, err)
	}
	return o.Org.ID
}
