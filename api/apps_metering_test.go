package api_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/nxcloud/nxcloud/apps/batch"
)

// TestAppUsesMetered: a trace is an app use (app.uses, batch.trace),
// recorded once per idempotency key: a retried request with the same key is
// not counted again, a refused one not at all.
func TestAppUsesMetered(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	a := s.env.NewTenant(t)
	key := bearer(a.APIKey)
	decode[batch.Lot](t, "lot", s.do(t, "POST", "/api/v1/lots", key, `{"code":"M-1","quantity":10,"product":"block"}`), http.StatusCreated)
	trace := func(idem string) int {
		req := httptest.NewRequest("GET", "/api/v1/lots/M-1/trace", nil)
		req.Header.Set("Authorization", key)
		if idem != "" {
			req.Header.Set("Idempotency-Key", idem)
		}
		rec := httptest.NewRecorder()
		s.srv.Handler().ServeHTTP(rec, req)
		return rec.Code
	}
	for _, idem := range []string{"trace-1", "trace-1", "trace-2", ""} {
		if code := trace(idem); code != http.StatusOK {
			t.Fatalf("trace = %d", code)
		}
	}
	if code := s.serve("GET", "/api/v1/lots/NO-SUCH/trace", key, "").status; code != http.StatusNotFound {
		t.Fatalf("unknown lot trace = %d", code)
	}
	var n int
	if err := s.env.DB.System.QueryRow(context.Background(), `
		SELECT coalesce(sum(quantity), 0) FROM usage_events WHERE tenant_id = $1 AND meter = 'app.uses' AND subject = 'batch.trace'`,
		a.ID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("%d traces metered, want 3 (keys trace-1 twice, trace-2, one without a key; the refused one not)", n)
	}
}
