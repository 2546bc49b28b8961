package tenants

import (
	"context"
	"encoding/base64"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
)

// AuditRecord is one row of a tenant's audit log.
type AuditRecord struct {
	ID           int64          `json:"id"`
	At           time.Time      `json:"at"`
	ActorKind    string         `json:"actor_kind"`
	ActorID      *uuid.UUID     `json:"actor_id,omitempty"`
	ActorOrg     *uuid.UUID     `json:"actor_org,omitempty"`
	ActorOrgKind string         `json:"actor_org_kind,omitempty"`
	ActorName    string         `json:"actor_name"`
	Action       string         `json:"action"`
	Resource     string         `json:"resource"`
	Result       string         `json:"result"`
	Status       int            `json:"status"`
	IP           string         `json:"ip"`
	RequestID    string         `json:"request_id"`
	Detail       map[string]any `json:"detail"`
}

// AuditQuery selects audit rows, newest first.
type AuditQuery struct {
	// Action matches exactly ("grant.revoke", "POST /api/v1/grants").
	Action string
	// Actor is a user, API key or organisation id, or an actor's name.
	Actor string
	// From and To bound the time, [From, To); zero means unbounded.
	From, To time.Time
	// Limit is the page size (default 100, at most 1000); Cursor the
	// next_cursor of the previous page.
	Limit  int
	Cursor string
}

// AuditPage is a page of audit rows.
type AuditPage struct {
	Items      []AuditRecord `json:"items"`
	NextCursor string        `json:"next_cursor,omitempty"`
}

// MaxAuditPage is the largest page AuditLog returns.
const MaxAuditPage = 1000

type auditFilter struct {
	before    int64
	action    *string
	actorID   *uuid.UUID
	actorName *string
	from, to  *time.Time
	limit     int
	paginated bool
}

func (q AuditQuery) filter(paginated bool) (auditFilter, error) {
	f := auditFilter{before: 1<<63 - 1, limit: q.Limit, paginated: paginated}
	if paginated {
		if f.limit == 0 {
			f.limit = 100
		}
		if f.limit < 0 || f.limit > MaxAuditPage {
			return f, apps.FieldError("limit", "limit must be between 1 and %d", MaxAuditPage)
		}
		if q.Cursor != "" {
			b, err := base64.RawURLEncoding.DecodeString(q.Cursor)
			v, perr := strconv.ParseInt(string(b), 10, 64)
			if err != nil || perr != nil || v <= 0 {
				return f, apps.FieldError("cursor", "malformed cursor; pass next_cursor from the previous page unchanged")
			}
			f.before = v
		}
	}
	if q.Action != "" {
		if !utf8.ValidString(q.Action) || len(q.Action) > 200 || containsNUL(q.Action) {
			return f, apps.FieldError("action", "want an action name of at most 200 characters")
		}
		f.action = &q.Action
	}
	if q.Actor != "" {
		if id, err := uuid.Parse(q.Actor); err == nil {
			f.actorID = &id
		} else if !utf8.ValidString(q.Actor) || len(q.Actor) > 200 || containsNUL(q.Actor) {
			return f, apps.FieldError("actor", "want an actor id or name of at most 200 characters")
		} else {
			f.actorName = &q.Actor
		}
	}
	if !q.From.IsZero() {
		f.from = &q.From
	}
	if !q.To.IsZero() {
		f.to = &q.To
	}
	if f.from != nil && f.to != nil && !q.From.Before(q.To) {
		return f, apps.FieldError("from", "from must be before to")
	}
	return f, nil
}

func containsNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}

func (f auditFilter) query(ctx context.Context, tx pgx.Tx) (pgx.Rows, error) {
	limit := any(nil)
	if f.paginated {
		limit = f.limit + 1
	}
	return tx.Query(ctx, `SELECT id, at, actor_kind, actor_id, actor_org, actor_org_kind, actor_name, action, resource,
			result, status, ip, request_id, detail
		FROM audit_log
		WHERE tenant_id = nx_require_tenant() AND id < $1
			AND ($2::text IS NULL OR action = $2)
			AND ($3::uuid IS NULL OR actor_id = $3 OR actor_org = $3)
			AND ($4::text IS NULL OR actor_name = $4)
			AND ($5::timestamptz IS NULL OR at >= $5)
			AND ($6::timestamptz IS NULL OR at < $6)
		ORDER BY id DESC LIMIT $7`,
		f.before, f.action, f.actorID, f.actorName, f.from, f.to, limit)
}

func scanAudit(r pgx.CollectableRow) (AuditRecord, error) {
	var x AuditRecord
	err := r.Scan(&x.ID, &x.At, &x.ActorKind, &x.ActorID, &x.ActorOrg, &x.ActorOrgKind, &x.ActorName, &x.Action,
		&x.Resource, &x.Result, &x.Status, &x.IP, &x.RequestID, &x.Detail)
	x.At = x.At.UTC()
	if x.Detail == nil {
		x.Detail = map[string]any{}
	}
	return x, err
}

// AuditLog returns a page of the audit log of the tenant of ctx, newest
// first. Errors: invalid (fields limit, cursor, action, actor, from).
func (s *Service) AuditLog(ctx context.Context, q AuditQuery) (AuditPage, error) {
	f, err := q.filter(true)
	if err != nil {
		return AuditPage{}, err
	}
	page := AuditPage{Items: []AuditRecord{}}
	err = InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		rows, err := f.query(ctx, tx)
		if err != nil {
			return err
		}
		page.Items, err = pgx.CollectRows(rows, scanAudit)
		return err
	})
	if err != nil {
		return AuditPage{}, err
	}
	if len(page.Items) > f.limit {
		page.Items = page.Items[:f.limit]
		page.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(page.Items[f.limit-1].ID, 10)))
	}
	return page, nil
}

// ExportAudit calls fn with every audit row of the tenant of ctx that q
// selects (Limit and Cursor ignored), newest first, streaming from one
// transaction. Errors: invalid (as AuditLog), and fn's.
func (s *Service) ExportAudit(ctx context.Context, q AuditQuery, fn func(AuditRecord) error) error {
	f, err := q.filter(false)
	if err != nil {
		return err
	}
	return InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		rows, err := f.query(ctx, tx)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			x, err := scanAudit(rows)
			if err != nil {
				return err
			}
			if err := fn(x); err != nil {
				return err
			}
		}
		return rows.Err()
	})
}
