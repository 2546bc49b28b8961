package tenants

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
)

// Audit results.
const (
	AuditOK     = "ok"
	AuditDenied = "denied"
	AuditError  = "error"
)

// Actor kinds besides the principal kinds (KindUser, KindAPIKey, KindOperator).
const KindAnonymous = "anonymous"

// AuditEntry is one audited action.
type AuditEntry struct {
	// Tenant is the tenant the action was on; uuid.Nil for none (platform-level
	// actions, or a tenant that does not exist). Only rows with a tenant are
	// visible to it.
	Tenant uuid.UUID
	// Actor is who acted; nil means the principal of ctx (anonymous when
	// there is none, e.g. a failed login).
	Actor *Principal
	// Action names what was done: "METHOD /route" for an API request, or a
	// domain action such as grant.create, grant.revoke, auth.login.
	Action string
	// Resource is what it was done to: a request path, "grants/<id>", ...
	Resource string
	// Result is AuditOK, AuditDenied or AuditError.
	Result string
	// Status is the HTTP status answered, 0 when none.
	Status int
	// IP and RequestID default to the request's (WithRequest).
	IP        string
	RequestID string
	// Detail holds what else matters (never secrets).
	Detail map[string]any
}

type requestKey struct{}

type requestInfo struct{ ip, id string }

// WithRequest returns ctx carrying the client address and request id, which
// Audit records unless the entry names others.
func WithRequest(ctx context.Context, ip, requestID string) context.Context {
	return context.WithValue(ctx, requestKey{}, requestInfo{ip: ip, id: requestID})
}

// AuditNote is what a handler adds to the audit row the API writes for its
// request: a domain action, the resource and detail. The API middleware puts
// one in the request context; services fill it through auditEvent.
type AuditNote struct {
	mu       sync.Mutex
	action   string
	resource string
	detail   map[string]any
}

type noteKey struct{}

// WithAuditNote returns ctx carrying a fresh note for the request's audit row.
func WithAuditNote(ctx context.Context) (context.Context, *AuditNote) {
	n := &AuditNote{}
	return context.WithValue(ctx, noteKey{}, n), n
}

// Get returns the noted action, resource and detail ("" and nil when none).
func (n *AuditNote) Get() (action, resource string, detail map[string]any) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.action, n.resource, n.detail
}

// auditEvent records a domain event: on the audit row of the API request
// when there is one (one row per request), as a row of its own otherwise.
func (s *Service) auditEvent(ctx context.Context, e AuditEntry) {
	if n, ok := ctx.Value(noteKey{}).(*AuditNote); ok && e.Actor == nil {
		n.mu.Lock()
		n.action, n.resource, n.detail = e.Action, e.Resource, e.Detail
		n.mu.Unlock()
		return
	}
	if err := s.Audit(ctx, e); err != nil {
		ip, id := requestFrom(ctx)
		_, log := s.grants.bus()
		log.Error("audit write failed", "action", e.Action, "tenant", e.Tenant, "request_id", id, "ip", ip, "err", err)
	}
}

func requestFrom(ctx context.Context) (ip, id string) {
	r, _ := ctx.Value(requestKey{}).(requestInfo)
	return r.ip, r.id
}

// auditTimeout bounds an audit write: it must not hold a request for long.
const auditTimeout = 3 * time.Second

// Audit appends an entry to the audit log (as the system: the app role may
// only read it). It writes even when ctx is cancelled (the client went away
// after acting), within a few seconds.
func (s *Service) Audit(ctx context.Context, e AuditEntry) error {
	p, ok := PrincipalFrom(ctx)
	if e.Actor != nil {
		p, ok = *e.Actor, true
	}
	kind := KindAnonymous
	var orgID *uuid.UUID
	if ok {
		kind = p.Kind
		if p.OrgID != uuid.Nil {
			orgID = &p.OrgID
		}
	}
	ip, id := requestFrom(ctx)
	if e.IP == "" {
		e.IP = ip
	}
	if e.RequestID == "" {
		e.RequestID = id
	}
	switch e.Result {
	case AuditOK, AuditDenied, AuditError:
	default:
		return fmt.Errorf("audit %s: result %q is not ok, denied or error", e.Action, e.Result)
	}
	detail := []byte("{}")
	if len(e.Detail) > 0 {
		var err error
		if detail, err = json.Marshal(cleanValue(e.Detail)); err != nil {
			return fmt.Errorf("audit %s: detail: %w", e.Action, err)
		}
	}
	var tenant *uuid.UUID
	if e.Tenant != uuid.Nil {
		tenant = &e.Tenant
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditTimeout)
	defer cancel()
	_, err := s.db.System.Exec(ctx, `INSERT INTO audit_log (tenant_id, actor_kind, actor_id, actor_org, actor_org_kind,
		actor_name, action, resource, result, status, ip, request_id, detail)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
		tenant, auditText(kind, 32), actorID(p), orgID, auditText(p.OrgKind, 32), auditText(p.Name, 200),
		auditText(e.Action, 200), auditText(e.Resource, 1000), e.Result, e.Status, auditText(e.IP, 64),
		auditText(e.RequestID, 128), detail)
	if err != nil {
		return fmt.Errorf("audit %s: %w", e.Action, err)
	}
	return nil
}

// auditText makes s storable in a text column: valid UTF-8, no NUL (which
// PostgreSQL refuses), at most n bytes.
func auditText(s string, n int) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "")
	if len(s) > n {
		s = clip(s, n)
	}
	return s
}

// cleanValue applies auditText to every string in a detail value, so jsonb
// accepts it.
func cleanValue(v any) any {
	switch x := v.(type) {
	case string:
		return auditText(x, 4000)
	case []string:
		out := make([]string, len(x))
		for i, s := range x {
			out[i] = auditText(s, 4000)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[auditText(k, 200)] = cleanValue(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = cleanValue(e)
		}
		return out
	}
	return v
}
