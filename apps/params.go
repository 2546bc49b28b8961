package apps

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/labstack/echo/v4"
)

// TimeParam reads query parameter name as an RFC 3339 time or epoch
// milliseconds, in UTC; def when absent. Errors: invalid.
func TimeParam(c echo.Context, name string, def time.Time) (time.Time, error) {
	v := c.QueryParam(name)
	if v == "" {
		return def, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		if y := t.UTC().Year(); y < 1 || y > 9999 {
			return time.Time{}, FieldError(name, "%s must be between years 0001 and 9999 UTC", name)
		}
		return t.UTC(), nil
	}
	if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms >= 0 && ms < 1e14 {
		return time.UnixMilli(ms).UTC(), nil
	}
	return time.Time{}, FieldError(name, "want an RFC 3339 time (2026-11-23T08:00:00Z) or epoch milliseconds, not %q", clip(v, 40))
}

// IntParam reads query parameter name as a positive integer; 0 when absent.
// Errors: invalid.
func IntParam(c echo.Context, name string) (int, error) {
	v := c.QueryParam(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, FieldError(name, "want a positive integer, not %q", clip(v, 40))
	}
	return n, nil
}

// clip shortens s for an error message, at a rune boundary, valid UTF-8.
func clip(s string, n int) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
