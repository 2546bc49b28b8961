package tenants

import (
	"context"
	"slices"
	"strings"
	"sync"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
)

// Principal kinds.
const (
	KindUser     = "user"
	KindAPIKey   = "api_key"
	KindOperator = "operator"
)

// Organisation kinds (DESIGN §1).
const (
	OrgEnterprise  = "enterprise"
	OrgContractor  = "contractor"
	OrgAssociation = "association"
	OrgOperator    = "operator"
)

// Principal is who an API request speaks for, and on which tenant.
type Principal struct {
	Kind    string    // KindUser, KindAPIKey or KindOperator
	UserID  uuid.UUID // users
	KeyID   uuid.UUID // API keys
	OrgID   uuid.UUID // the principal's organisation
	OrgKind string    // OrgEnterprise, OrgContractor, OrgAssociation, OrgOperator
	Role    string    // the user's role in its organisation
	// TenantID is the tenant the request acts on: an enterprise's own; for a
	// contractor, the granting tenant it named (header X-Nx-Tenant).
	TenantID uuid.UUID
	// Scopes bound what an API key or a contractor grant allows (AllScopes,
	// "*": every tenant permission, for the onboarding and demo keys).
	Scopes []string
	Name   string
}

// Permissions. A route requires exactly one; roles, API key scopes and
// contractor grants are sets of them.
const (
	PermTenantRead     = "tenant:read"
	PermDevicesRead    = "devices:read"
	PermDevicesWrite   = "devices:write"
	PermTelemetryRead  = "telemetry:read"
	PermUsersRead      = "users:read"
	PermUsersWrite     = "users:write"
	PermKeysRead       = "keys:read"
	PermKeysWrite      = "keys:write"
	PermGrantsRead     = "grants:read"
	PermGrantsWrite    = "grants:write"
	PermAuditRead      = "audit:read"
	PermModulesDeploy  = "modules:deploy"
	PermBenchmarksRead = "benchmarks:read"
	// N apps. Read lets a principal see an app's records; write lets it
	// record (lots, results, drafts); approve is the decision a quality or
	// production lead takes (releasing a recipe, accepting a downgrade).
	PermBatchRead      = "batch:read"
	PermBatchWrite     = "batch:write"
	PermQualityRead    = "quality:read"
	PermQualityWrite   = "quality:write"
	PermRecipesRead    = "recipes:read"
	PermRecipesWrite   = "recipes:write"
	PermRecipesApprove = "recipes:approve"
	PermDowngradeRead  = "downgrades:read"
	PermDowngradeWrite = "downgrades:write"
	// PermDowngradeApprove decides a downgrade proposal (approve or reject).
	PermDowngradeApprove = "downgrades:approve"
	// PermUsageRead lets a principal see its tenant's metered usage and bills.
	PermUsageRead = "usage:read"
	// PermSelfRead lets any signed-in principal read who it is (GET /me);
	// every role holds it, whatever its organisation and tenant.
	PermSelfRead = "self:read"
	// Operator permissions: sectors, templates, plans and tenants' status; no
	// business data.
	PermOperate = "platform:operate"
)

// rolePermissions is the one table that maps roles to permissions.
var rolePermissions = map[string]map[string][]string{
	OrgEnterprise: {
		"owner":    append([]string{PermSelfRead, PermTenantRead, PermDevicesRead, PermDevicesWrite, PermTelemetryRead, PermUsersRead, PermUsersWrite, PermKeysRead, PermKeysWrite, PermGrantsRead, PermGrantsWrite, PermAuditRead, PermBenchmarksRead, PermUsageRead}, appsLead...),
		"admin":    append([]string{PermSelfRead, PermTenantRead, PermDevicesRead, PermDevicesWrite, PermTelemetryRead, PermUsersRead, PermUsersWrite, PermKeysRead, PermKeysWrite, PermGrantsRead, PermGrantsWrite, PermAuditRead, PermBenchmarksRead, PermUsageRead}, appsLead...),
		"engineer": append([]string{PermSelfRead, PermTenantRead, PermDevicesRead, PermDevicesWrite, PermTelemetryRead, PermBenchmarksRead}, appsLead...),
		"operator": append([]string{PermSelfRead, PermTenantRead, PermDevicesRead, PermTelemetryRead}, appsWork...),
		"viewer":   append([]string{PermSelfRead, PermTenantRead, PermDevicesRead, PermTelemetryRead}, appsRead...),
	},
	// A contractor member's rights on a tenant are exactly its grant's scopes
	// (self:read aside, which is about the member, not the tenant).
	OrgContractor:  {"member": {PermSelfRead}},
	OrgAssociation: {"analyst": {PermSelfRead, PermBenchmarksRead}},
	OrgOperator:    {"admin": {PermSelfRead, PermOperate}},
}

// appsRead, appsWork and appsLead are the N-app permissions of viewers
// (read), shop-floor operators (read and record) and engineers, admins and
// owners (read, record and decide).
var (
	appsRead = []string{PermBatchRead, PermQualityRead, PermRecipesRead, PermDowngradeRead}
	appsWork = append(slices.Clone(appsRead), PermBatchWrite, PermQualityWrite, PermDowngradeWrite)
	appsLead = append(slices.Clone(appsWork), PermRecipesWrite, PermRecipesApprove, PermDowngradeApprove)
)

// GrantableScopes are the scopes an enterprise may grant a contractor.
var GrantableScopes = []string{PermTenantRead, PermDevicesRead, PermDevicesWrite, PermTelemetryRead, PermModulesDeploy,
	PermBatchRead, PermQualityRead, PermRecipesRead, PermDowngradeRead}

// AllScopes is the scope of the keys made at onboarding and by the demo:
// every permission of the enterprise (Authorize lets such a key do whatever
// a tenant permission allows). Keys created through the API never hold it.
const AllScopes = "*"

// keyExcluded are the enterprise permissions an API key created through the
// API never holds: a key cannot manage people, mint keys or hand out access,
// so a leaked key cannot entrench itself.
var keyExcluded = []string{PermSelfRead, PermUsersWrite, PermKeysWrite, PermGrantsWrite}

// APIKeyScopes returns the scopes an API key may be created with: the
// permissions of the enterprise's roles, less users:write, keys:write and
// grants:write (and self:read, which every key has), sorted.
func APIKeyScopes() []string {
	var out []string
	for _, perms := range rolePermissions[OrgEnterprise] {
		for _, p := range perms {
			if !slices.Contains(keyExcluded, p) && !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	slices.Sort(out)
	return out
}

// Roles returns the roles of an organisation kind.
func Roles(orgKind string) []string {
	var out []string
	for r := range rolePermissions[orgKind] {
		out = append(out, r)
	}
	slices.Sort(out)
	return out
}

// ValidRole reports whether role exists for an organisation kind.
func ValidRole(orgKind, role string) bool {
	_, ok := rolePermissions[orgKind][role]
	return ok
}

// Authorize is the one place that decides whether p may use perm on its
// tenant. It returns nil or a forbidden error. Contractors are decided by
// their grant's scopes, which the authentication step put in p.Scopes after
// checking the grant is live; API keys by their scopes ("*": every tenant
// permission), which AuthenticateAPIKey put in p.Scopes.
func Authorize(p Principal, perm string) error {
	allowed := false
	switch {
	case perm == PermSelfRead:
		// About the caller itself: no tenant needed, no grant involved.
		allowed = p.Kind == KindAPIKey || (p.Kind == KindUser && slices.Contains(rolePermissions[p.OrgKind][p.Role], perm))
	case p.Kind == KindOperator:
		allowed = perm == PermOperate
	case p.OrgKind == OrgContractor:
		allowed = p.TenantID != uuid.Nil && perm != PermOperate && slices.Contains(p.Scopes, perm)
	case p.Kind == KindAPIKey:
		allowed = p.TenantID != uuid.Nil && perm != PermOperate &&
			(slices.Contains(p.Scopes, AllScopes) || slices.Contains(p.Scopes, perm))
	default:
		allowed = slices.Contains(rolePermissions[p.OrgKind][p.Role], perm) &&
			(perm == PermOperate || p.TenantID != uuid.Nil || p.OrgKind == OrgAssociation)
	}
	if !allowed {
		return apps.Errorf(apps.Forbidden, "not allowed: %s", perm)
	}
	return nil
}

type principalKey struct{}

// WithPrincipal returns ctx carrying p (and p's tenant, for InTx).
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	ctx = context.WithValue(ctx, principalKey{}, p)
	if p.TenantID != uuid.Nil {
		ctx = WithTenant(ctx, p.TenantID)
	}
	return ctx
}

// PrincipalFrom returns the principal of ctx.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// Routes registers routes with the permission each requires, and remembers
// them, so a test can prove every route declares one.
type Routes struct {
	mu    sync.Mutex
	perms map[string]string // "GET /api/v1/devices" → permission
}

// NewRoutes returns an empty route table.
func NewRoutes() *Routes { return &Routes{perms: map[string]string{}} }

// Add registers h on g for method and path, requiring perm.
func (r *Routes) Add(g *echo.Group, method, path, perm string, h echo.HandlerFunc) {
	route := g.Add(method, path, h, Require(perm))
	r.mu.Lock()
	r.perms[method+" "+route.Path] = perm
	r.mu.Unlock()
}

// PermPublic marks the few routes open without authentication (login,
// accepting an invitation).
const PermPublic = "public"

// AddPublic registers h on g for method and path without authentication.
func (r *Routes) AddPublic(g *echo.Group, method, path string, h echo.HandlerFunc) {
	route := g.Add(method, path, h)
	r.mu.Lock()
	r.perms[method+" "+route.Path] = PermPublic
	r.mu.Unlock()
}

// Permission returns the permission a route requires.
func (r *Routes) Permission(method, path string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.perms[method+" "+path]
	return p, ok
}

// Require is the middleware that authorises perm for the request's principal.
func Require(perm string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			p, ok := PrincipalFrom(c.Request().Context())
			if !ok {
				return apps.Errorf(apps.Unauthorized, "authentication required")
			}
			if err := Authorize(p, perm); err != nil {
				return err
			}
			return next(c)
		}
	}
}

// hasScope reports whether scopes (comma or space separated) are all grantable.
func validScopes(scopes []string) error {
	for _, s := range scopes {
		if !slices.Contains(GrantableScopes, s) && !strings.HasPrefix(s, "apps:") {
			return apps.FieldError("scopes", "unknown scope %q; grantable: %s, apps:<name>", s, strings.Join(GrantableScopes, ", "))
		}
	}
	if len(scopes) == 0 {
		return apps.FieldError("scopes", "at least one scope is required")
	}
	return nil
}
