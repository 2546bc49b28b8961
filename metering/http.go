package metering

import (
	"bytes"
	"net/http"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Handler serves usage, subscriptions, invoices (tenant) and plans and every
// tenant's invoices (operator).
type Handler struct {
	svc *Service
	// resolve finds the tenant of an operator route's :tenant (slug or id).
	resolve func(c echo.Context) (uuid.UUID, error)
}

// NewHandler returns a Handler; resolve turns an operator route's :tenant
// parameter into a tenant id (not_found when there is none).
func NewHandler(svc *Service, resolve func(c echo.Context) (uuid.UUID, error)) *Handler {
	return &Handler{svc: svc, resolve: resolve}
}

// RegisterTenant adds the tenant routes (usage:read) to g.
func (h *Handler) RegisterTenant(g *echo.Group, r *tenants.Routes) {
	r.Add(g, http.MethodGet, "/usage", tenants.PermUsageRead, h.usage)
	r.Add(g, http.MethodGet, "/usage/alerts", tenants.PermUsageRead, h.alerts)
	r.Add(g, http.MethodGet, "/usage/quotas", tenants.PermUsageRead, h.quotaStates)
	r.Add(g, http.MethodGet, "/billing/subscriptions", tenants.PermUsageRead, h.subscriptions)
	r.Add(g, http.MethodPost, "/billing/subscriptions", tenants.PermUsageRead, h.subscribe)
	r.Add(g, http.MethodGet, "/invoices", tenants.PermUsageRead, h.invoices)
	r.Add(g, http.MethodGet, "/invoices/:invoice", tenants.PermUsageRead, h.invoice)
	r.Add(g, http.MethodGet, "/invoices/:invoice/csv", tenants.PermUsageRead, h.invoiceCSV)
}

// RegisterOperator adds the operator routes (platform:operate) to g.
func (h *Handler) RegisterOperator(g *echo.Group, r *tenants.Routes) {
	r.Add(g, http.MethodGet, "/plans", tenants.PermOperate, h.plans)
	r.Add(g, http.MethodPost, "/plans", tenants.PermOperate, h.createPlan)
	r.Add(g, http.MethodPost, "/enterprises/:tenant/subscriptions", tenants.PermOperate, h.operatorSubscribe)
	r.Add(g, http.MethodPost, "/enterprises/:tenant/invoices/close", tenants.PermOperate, h.closeInvoice)
	r.Add(g, http.MethodGet, "/enterprises/:tenant/usage", tenants.PermOperate, h.operatorUsage)
	r.Add(g, http.MethodGet, "/invoices", tenants.PermOperate, h.allInvoices)
	r.Add(g, http.MethodGet, "/invoices/:invoice/csv", tenants.PermOperate, h.operatorInvoiceCSV)
}

func tenantOf(c echo.Context) (uuid.UUID, error) {
	id, ok := tenants.FromContext(c.Request().Context())
	if !ok {
		return uuid.Nil, apps.Errorf(apps.Unauthorized, "no tenant in this request")
	}
	return id, nil
}

// inTx runs fn under the request's tenant (row-level security).
func (h *Handler) inTx(c echo.Context, fn func(tx pgx.Tx, tenant uuid.UUID) error) error {
	tenant, err := tenantOf(c)
	if err != nil {
		return err
	}
	return tenants.InTx(c.Request().Context(), h.svc.app, func(tx pgx.Tx) error { return fn(tx, tenant) })
}

type list[T any] struct {
	TenantID *uuid.UUID `json:"tenant_id,omitempty"`
	Items    []T        `json:"items"`
}

// usageQuery reads the usage report's query parameters.
func (h *Handler) usageQuery(c echo.Context) (from, to time.Time, group, meter string, err error) {
	now := h.svc.now().UTC()
	if from, err = apps.TimeParam(c, "from", monthStart(now)); err != nil {
		return
	}
	if to, err = apps.TimeParam(c, "to", from.AddDate(0, 1, 0)); err != nil {
		return
	}
	return from, to, c.QueryParam("group"), c.QueryParam("meter"), nil
}

// operatorUsage is an enterprise's usage for the operator (billing support:
// quantities only, no business records).
func (h *Handler) operatorUsage(c echo.Context) error {
	t, err := h.resolve(c)
	if err != nil {
		return err
	}
	from, to, group, meter, err := h.usageQuery(c)
	if err != nil {
		return err
	}
	rep, err := h.svc.Usage(c.Request().Context(), h.svc.sys, t, from, to, group, meter)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, struct {
		TenantID uuid.UUID `json:"tenant_id"`
		UsageReport
	}{t, rep})
}

func (h *Handler) usage(c echo.Context) error {
	now := h.svc.now().UTC()
	from, err := apps.TimeParam(c, "from", monthStart(now))
	if err != nil {
		return err
	}
	to, err := apps.TimeParam(c, "to", from.AddDate(0, 1, 0))
	if err != nil {
		return err
	}
	group, meter := c.QueryParam("group"), c.QueryParam("meter")
	var rep UsageReport
	var tenant uuid.UUID
	err = h.inTx(c, func(tx pgx.Tx, t uuid.UUID) error {
		tenant = t
		rep, err = h.svc.Usage(c.Request().Context(), tx, t, from, to, group, meter)
		return err
	})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, struct {
		TenantID uuid.UUID `json:"tenant_id"`
		UsageReport
	}{tenant, rep})
}

func (h *Handler) alerts(c echo.Context) error {
	var out list[Alert]
	err := h.inTx(c, func(tx pgx.Tx, t uuid.UUID) (err error) {
		out.TenantID = &t
		out.Items, err = h.svc.Alerts(c.Request().Context(), tx, t)
		return err
	})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) quotaStates(c echo.Context) error {
	t, err := tenantOf(c)
	if err != nil {
		return err
	}
	items, err := h.svc.QuotaStates(c.Request().Context(), t)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, list[QuotaState]{TenantID: &t, Items: items})
}

func (h *Handler) subscriptions(c echo.Context) error {
	var out list[Subscription]
	err := h.inTx(c, func(tx pgx.Tx, t uuid.UUID) (err error) {
		out.TenantID = &t
		out.Items, err = h.svc.Subscriptions(c.Request().Context(), tx, t)
		return err
	})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

// subscribe lets the enterprise's owner (a session of its owner, or its
// all-scopes onboarding key) choose a plan from the next month on.
func (h *Handler) subscribe(c echo.Context) error {
	p, _ := tenants.PrincipalFrom(c.Request().Context())
	owner := (p.Kind == tenants.KindUser && p.OrgKind == tenants.OrgEnterprise && p.Role == "owner") ||
		(p.Kind == tenants.KindAPIKey && slices.Contains(p.Scopes, tenants.AllScopes))
	if !owner {
		return apps.Errorf(apps.Forbidden, "only the enterprise's owner changes its plan")
	}
	var in SubscriptionInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	if in.EffectBaseline != nil {
		return apps.FieldError("effect_baseline", "the effect baseline is agreed with the operator at go-live; the operator sets it")
	}
	var sub Subscription
	err := h.inTx(c, func(tx pgx.Tx, t uuid.UUID) (err error) {
		sub, err = h.svc.Subscribe(c.Request().Context(), tx, t, in, "owner:"+p.Name)
		return err
	})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, sub)
}

func (h *Handler) invoices(c echo.Context) error {
	var out list[Invoice]
	err := h.inTx(c, func(tx pgx.Tx, t uuid.UUID) (err error) {
		out.TenantID = &t
		out.Items, err = h.svc.Invoices(c.Request().Context(), tx, t)
		return err
	})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func invoiceParam(c echo.Context) (uuid.UUID, error) {
	id, err := uuid.Parse(c.Param("invoice"))
	if err != nil {
		return uuid.Nil, apps.Errorf(apps.NotFound, "invoice not found")
	}
	return id, nil
}

func (h *Handler) tenantInvoice(c echo.Context) (Invoice, error) {
	id, err := invoiceParam(c)
	if err != nil {
		return Invoice{}, err
	}
	var inv Invoice
	err = h.inTx(c, func(tx pgx.Tx, t uuid.UUID) (err error) {
		inv, err = h.svc.Invoice(c.Request().Context(), tx, t, id)
		return err
	})
	return inv, err
}

func (h *Handler) invoice(c echo.Context) error {
	inv, err := h.tenantInvoice(c)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, inv)
}

func (h *Handler) invoiceCSV(c echo.Context) error {
	inv, err := h.tenantInvoice(c)
	if err != nil {
		return err
	}
	return sendCSV(c, inv)
}

func sendCSV(c echo.Context, inv Invoice) error {
	var b bytes.Buffer
	if err := WriteCSV(&b, inv); err != nil {
		return err
	}
	c.Response().Header().Set("Content-Disposition", `attachment; filename="invoice-`+inv.Period+`-`+inv.ID.String()+`.csv"`)
	return c.Blob(http.StatusOK, "text/csv; charset=utf-8", b.Bytes())
}

func (h *Handler) plans(c echo.Context) error {
	items, err := h.svc.Plans(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, list[Plan]{Items: items})
}

func operatorName(c echo.Context) string {
	p, _ := tenants.PrincipalFrom(c.Request().Context())
	return "operator:" + p.Name
}

func (h *Handler) createPlan(c echo.Context) error {
	var in PlanInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	p, err := h.svc.CreatePlan(c.Request().Context(), in, operatorName(c))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, p)
}

func (h *Handler) operatorSubscribe(c echo.Context) error {
	t, err := h.resolve(c)
	if err != nil {
		return err
	}
	var in SubscriptionInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	sub, err := h.svc.Subscribe(c.Request().Context(), h.svc.sys, t, in, operatorName(c))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, sub)
}

func (h *Handler) closeInvoice(c echo.Context) error {
	t, err := h.resolve(c)
	if err != nil {
		return err
	}
	var in struct {
		Period string `json:"period"`
	}
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	period, err := ParsePeriod(in.Period)
	if err != nil {
		return err
	}
	inv, err := h.svc.Close(c.Request().Context(), t, period)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, inv)
}

func (h *Handler) allInvoices(c echo.Context) error {
	items, err := h.svc.Invoices(c.Request().Context(), h.svc.sys, uuid.Nil)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, list[Invoice]{Items: items})
}

func (h *Handler) operatorInvoiceCSV(c echo.Context) error {
	id, err := invoiceParam(c)
	if err != nil {
		return err
	}
	var tenant uuid.UUID
	if err := h.svc.sys.QueryRow(c.Request().Context(), `SELECT tenant_id FROM invoices WHERE id = $1`, id).Scan(&tenant); err != nil {
		return tenants.StoreError(err, "invoice")
	}
	inv, err := h.svc.storedInvoice(c.Request().Context(), h.svc.sys, tenant, `id = $2`, id)
	if err != nil {
		return err
	}
	return sendCSV(c, inv)
}
