package ingest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"time"
	"unicode/utf8"
)

var (
	fuzzSchema = Schema{
		"temp":  {ID: 1, Min: -50, Max: 1200},
		"p":     {ID: 2, Min: 0, Max: 1e6},
		"rpm":   {ID: 3, Min: math.Inf(-1), Max: math.Inf(1)},
		"on":    {ID: 4, Min: 0, Max: 1},
		"a/b":   {ID: 5, Min: -1, Max: 1},
		"débit": {ID: 6, Min: 0, Max: 100},
		"":      {ID: 7, Min: 0, Max: 0},
	}
	fuzzByID = func() map[int32]MetricSpec {
		m := map[int32]MetricSpec{}
		for _, s := range fuzzSchema {
			m[s.ID] = s
		}
		return m
	}()
	fuzzNow    = time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
	fuzzLimits = Limits{MaxPayload: 16 << 10, MaxPoints: 20, MaxAge: 24 * time.Hour, MaxFuture: 10 * time.Minute}
)

// FuzzDecode checks Decode's invariants on any input, and, for inputs that are
// valid JSON without repeated keys, compares the accepted (metric, value) pairs
// with a reference built on encoding/json. Each input is also tried as the
// body of a metrics object, where random bytes reach the metric rules more
// often.
func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "payloads", "*.json"))
	for _, name := range files {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		checkDecode(t, in)
		checkDecode(t, append(append([]byte(`{"metrics":`), in...), '}'))
	})
}

func checkDecode(t *testing.T, in []byte) {
	t.Helper()
	pts, rejs := Decode(in, fuzzSchema, fuzzNow, fuzzLimits, nil)
	checkRejections(t, rejs)
	if len(pts) > fuzzLimits.MaxPoints {
		t.Fatalf("%d points, limit %d", len(pts), fuzzLimits.MaxPoints)
	}
	lo, hi := fuzzNow.Add(-fuzzLimits.MaxAge), fuzzNow.Add(fuzzLimits.MaxFuture)
	for _, p := range pts {
		s, ok := fuzzByID[p.MetricID]
		if !ok || math.IsNaN(p.Value) || math.IsInf(p.Value, 0) || p.Value < s.Min || p.Value > s.Max {
			t.Fatalf("bad point %+v", p)
		}
		if p.TS.Location() != time.UTC || !p.TS.Equal(p.TS.Truncate(time.Microsecond)) ||
			p.TS.Before(lo) || p.TS.After(hi) {
			t.Fatalf("bad ts in %+v", p)
		}
	}
	whole := len(rejs) == 1 && len(pts) == 0
	switch {
	case len(in) > fuzzLimits.MaxPayload:
		if !whole || rejs[0].Reason != ReasonTooLarge {
			t.Fatalf("oversized payload: %v %v", pts, rejs)
		}
	case !json.Valid(in):
		// Only too deep a nesting can stop the scan before the error.
		if !whole || (rejs[0].Reason != ReasonMalformed && rejs[0].Reason != ReasonShape) {
			t.Fatalf("invalid JSON %q gave %v %v", in, pts, rejs)
		}
	case utf8.Valid(in) && jsonDepth(in) <= maxDepth:
		for _, r := range rejs {
			if r.Reason == ReasonMalformed {
				t.Fatalf("valid JSON %q rejected: %+v", in, r)
			}
		}
	}

	want, ok := reference(in)
	if !ok {
		return
	}
	got := map[refPair]int{}
	for _, p := range pts {
		got[refPair{p.MetricID, math.Float64bits(p.Value)}]++
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: accepted pairs differ from encoding/json's reading:\n got %v\nwant %v\nrejections %v", in, got, want, rejs)
	}
}

type refPair struct {
	id   int32
	bits uint64
}

// reference decodes in with encoding/json and applies the rules of Decode. ok
// is false for inputs it does not judge: invalid JSON or UTF-8, too deep, too
// large, repeated keys, or a ts within a millisecond of the window's edges
// (float64 epoch ms are not exact there).
func reference(in []byte) (pairs map[refPair]int, ok bool) {
	if len(in) > fuzzLimits.MaxPayload || !json.Valid(in) || !utf8.Valid(in) || jsonDepth(in) > maxDepth || repeatsKeys(in) {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(in))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, false
	}
	elems, _ := v.([]any)
	if m, isObj := v.(map[string]any); isObj {
		elems = []any{m}
	}
	lo, hi := fuzzNow.Add(-fuzzLimits.MaxAge), fuzzNow.Add(fuzzLimits.MaxFuture)
	pairs = map[refPair]int{}
	total, full := 0, false
	for _, e := range elems {
		m, _ := e.(map[string]any)
		metrics, _ := m["metrics"].(map[string]any)
		if len(metrics) == 0 {
			continue
		}
		if ts, has := m["ts"]; has {
			var t time.Time
			switch ts := ts.(type) {
			case string:
				var err error
				if t, err = time.Parse(time.RFC3339Nano, ts); err != nil {
					continue
				}
			case json.Number:
				ms, err := strconv.ParseFloat(string(ts), 64)
				if err != nil || math.Abs(ms) > 9e12 { // beyond time.Duration, and any window
					continue
				}
				t = time.UnixMilli(0).Add(time.Duration(ms * 1e6))
			default:
				continue
			}
			if t.Sub(lo).Abs() <= time.Millisecond || t.Sub(hi).Abs() <= time.Millisecond {
				return nil, false
			}
			if t.Before(lo) || t.After(hi) {
				continue
			}
		}
		var el []refPair
		for k, v := range metrics {
			s, known := fuzzSchema[k]
			num, isNum := v.(json.Number)
			if !known || !isNum {
				continue
			}
			f, err := strconv.ParseFloat(string(num), 64)
			if err != nil || f < s.Min || f > s.Max {
				continue
			}
			el = append(el, refPair{s.ID, math.Float64bits(f)})
		}
		if len(el) == 0 {
			continue
		}
		if full || total+len(el) > fuzzLimits.MaxPoints {
			full = true
			continue
		}
		total += len(el)
		for _, p := range el {
			pairs[p]++
		}
	}
	return pairs, true
}

// repeatsKeys reports whether an object of valid JSON in has a key twice
// (after unescaping, as encoding/json compares them).
func repeatsKeys(in []byte) bool {
	type frame struct {
		keys    map[string]bool // nil for an array
		wantKey bool
	}
	var stack []*frame
	dec := json.NewDecoder(bytes.NewReader(in))
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return false
		}
		if err != nil {
			return true // not judged
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if s, isStr := tok.(string); isStr && top != nil && top.wantKey {
			if top.keys[s] {
				return true
			}
			top.keys[s] = true
			top.wantKey = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{keys: map[string]bool{}, wantKey: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			if len(stack) == 0 {
				continue
			}
			top = stack[len(stack)-1]
		}
		if top != nil && top.keys != nil {
			top.wantKey = true // a member's value is done
		}
	}
}

// jsonDepth returns the deepest bracket nesting of valid JSON.
func jsonDepth(in []byte) int {
	depth, deepest, inStr := 0, 0, false
	for i := 0; i < len(in); i++ {
		switch c := in[i]; {
		case inStr && c == '\\':
			i++
		case c == '"':
			inStr = !inStr
		case inStr:
		case c == '{' || c == '[':
			depth++
			deepest = max(deepest, depth)
		case c == '}' || c == ']':
			depth--
		}
	}
	return deepest
}

// FuzzTimestamp checks the exact epoch-milliseconds conversion against a
// constructed expectation and against float arithmetic, and that ts text
// parsing agrees with time.Parse.
func FuzzTimestamp(f *testing.F) {
	f.Add(int64(1717243140000), uint32(500000), []byte("1717243140000.5"))
	f.Add(int64(0), uint32(1), []byte("2024-06-01T13:59:00.5+02:00"))
	f.Add(int64(999_999_999_999_999), uint32(999_999), []byte("-1.5e3"))
	f.Add(int64(1), uint32(0), []byte("1e15"))
	f.Fuzz(func(t *testing.T, ms int64, frac uint32, raw []byte) {
		if ms >= 0 && ms < maxEpochMs {
			frac %= 1_000_000
			tok := []byte(fmt.Sprintf("%d.%06d", ms, frac))
			want := time.UnixMilli(ms).Add(time.Duration(frac)).UTC().Truncate(time.Microsecond)
			if got, reason := parseTimestamp(tok, false); reason != "" || !got.Equal(want) {
				t.Fatalf("timestamp(%s) = %v %q, want %v", tok, got, reason, want)
			}
		}

		// Any text: never panics, agrees with time.Parse.
		got, reason := parseTimestamp(raw, true)
		if want, err := time.Parse(time.RFC3339Nano, string(raw)); (err != nil) != (reason == ReasonTimestamp) ||
			(err == nil && !got.Equal(want.Truncate(time.Microsecond))) {
			t.Fatalf("timestamp(%q) = %v %q, time.Parse: %v %v", raw, got, reason, want, err)
		}

		// Any valid number token: within a microsecond of float arithmetic.
		var tok []byte
		d := decoder{buf: raw}
		if !d.run(func() { tok = d.number() }) || d.pos != len(raw) {
			return
		}
		got, reason = parseTimestamp(tok, false)
		x, err := strconv.ParseFloat(string(tok), 64)
		if err != nil || math.Abs(x) >= maxEpochMs {
			if reason != ReasonWindow {
				t.Fatalf("timestamp(%s) = %v %q, want %q", tok, got, reason, ReasonWindow)
			}
			return
		}
		if reason != "" || got.Location() != time.UTC || !got.Equal(got.Truncate(time.Microsecond)) {
			t.Fatalf("timestamp(%s) = %v %q", tok, got, reason)
		}
		if math.Abs(x) > 9e12 { // beyond time.Duration
			return
		}
		ref := time.UnixMilli(0).Add(time.Duration(math.Floor(x)) * time.Millisecond).
			Add(time.Duration((x - math.Floor(x)) * 1e6))
		// float64 carries ~16 digits: allow its rounding, plus truncation.
		if diff := got.Sub(ref).Abs(); diff > time.Microsecond+time.Duration(math.Abs(x)*1e6*0x1p-51) {
			t.Fatalf("timestamp(%s) = %v, float arithmetic gives %v", tok, got, ref)
		}
	})
}

// TestDecodeReference keeps the differential check from going vacuous: the
// reference must judge ordinary payloads and skip repeated keys.
func TestDecodeReference(t *testing.T) {
	for in, want := range map[string]int{
		`[{"ts":1717243140000,"metrics":{"temp":1,"p":2}},{"metrics":{"on":1,"x":1}}]`: 3,
		`{"ts":"2024-06-01T11:00:00+01:00","metrics":{"d\u00e9bit":1,"a\/b":0.5}}`:     2,
		`{"ts":"2000-01-01T00:00:00Z","metrics":{"temp":1}}`:                           0,
	} {
		got, ok := reference([]byte(in))
		n := 0
		for _, c := range got {
			n += c
		}
		if !ok || n != want {
			t.Errorf("reference(%s) = %v, %v; want %d pairs", in, got, ok, want)
		}
	}
	for _, in := range []string{`{"metrics":{"temp":1,"te\u006dp":2}}`, `{"ts":1717156800000,"metrics":{"temp":1}}`} {
		if _, ok := reference([]byte(in)); ok {
			t.Errorf("reference judged %s", in)
		}
	}
}
