package ingest

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Reasons for rejecting a part of a payload. They are stored in the dead-letter
// table and shown to tenants, so they never change.
const (
	ReasonMalformed     = "malformed_json"
	ReasonTooLarge      = "payload_too_large"
	ReasonShape         = "bad_shape"
	ReasonTimestamp     = "bad_timestamp"
	ReasonWindow        = "timestamp_out_of_window"
	ReasonUnknownMetric = "unknown_metric"
	ReasonType          = "not_a_number"
	ReasonNonFinite     = "non_finite"
	ReasonRange         = "out_of_range"
	ReasonDuplicate     = "duplicate_key"
	ReasonTooMany       = "too_many_points"
	ReasonUnknownField  = "unknown_field"
)

const (
	maxDepth   = 64   // deepest bracket nesting followed, counting the payload's own
	maxDetail  = 200  // bytes of Rejection.Detail
	maxMetric  = 64   // bytes of Rejection.Metric, and of payload text quoted in a Detail
	maxEpochMs = 1e15 // epoch ms beyond this (year 33658) are not taken for times
)

// MetricSpec is what the decoder knows of one metric key of a device model.
type MetricSpec struct {
	ID       int32
	Min, Max float64 // valid range, inclusive; use math.Inf(-1)/math.Inf(1) for open bounds
}

// Schema maps metric keys of one device model to their specs.
type Schema map[string]MetricSpec

// Point is one accepted reading.
type Point struct {
	TS       time.Time // UTC, truncated to microseconds (PostgreSQL precision)
	MetricID int32
	Value    float64
}

// Rejection is one rejected part of a payload.
type Rejection struct {
	Reason string // a stable code, one of the Reason* constants
	Detail string // human-readable, names the metric/element/value; ≤ 200 bytes
	Metric string // metric key when the rejection is about one metric ("" otherwise), truncated to 64 bytes
}

// Limits bound what a payload may be. Zero or negative fields take the
// defaults of DefaultLimits.
type Limits struct {
	MaxPayload int           // bytes; larger payloads are rejected whole (default 256 KiB)
	MaxPoints  int           // points per payload (default 10_000); elements beyond are rejected
	MaxAge     time.Duration // oldest accepted ts relative to now (default 7 days)
	MaxFuture  time.Duration // newest accepted ts relative to now (default 10 minutes)
}

// DefaultLimits returns the defaults above.
func DefaultLimits() Limits {
	return Limits{MaxPayload: 256 << 10, MaxPoints: 10_000, MaxAge: 7 * 24 * time.Hour, MaxFuture: 10 * time.Minute}
}

func (l Limits) orDefaults() Limits {
	def := DefaultLimits()
	return Limits{MaxPayload: orDefault(l.MaxPayload, def.MaxPayload), MaxPoints: orDefault(l.MaxPoints, def.MaxPoints),
		MaxAge: orDefault(l.MaxAge, def.MaxAge), MaxFuture: orDefault(l.MaxFuture, def.MaxFuture)}
}

func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// Decode parses a telemetry payload and validates it against schema. It
// appends accepted points to dst and returns them, plus the rejections. Invalid
// parts are rejected individually and the rest is kept: a bad metric drops only
// that metric; a bad element of an array drops only that element. A payload that
// is not valid JSON, too large, or not an object/array of objects yields one
// rejection and no points. It never panics, whatever the input.
//
// Elements without ts get now; others must fall in [now-MaxAge, now+MaxFuture]
// once truncated to microseconds. MaxPoints applies to whole elements: the
// first element that would pass it, and every later one with points, is
// rejected. Two keys of one metrics object that resolve to the same metric ID
// count as a repeated key.
func Decode(payload []byte, schema Schema, now time.Time, lim Limits, dst []Point) ([]Point, []Rejection) {
	lim = lim.orDefaults()
	if len(payload) > lim.MaxPayload {
		return dst, []Rejection{{Reason: ReasonTooLarge,
			Detail: fmt.Sprintf("payload is %d bytes, limit is %d", len(payload), lim.MaxPayload)}}
	}
	now = now.UTC()
	d := decoder{buf: payload, schema: schema, maxPoints: lim.MaxPoints, dst: dst,
		now: now.Truncate(time.Microsecond), lo: now.Add(-lim.MaxAge), hi: now.Add(lim.MaxFuture)}
	if !d.run(func() { d.payload() }) {
		return dst, []Rejection{{Reason: d.fatal, Detail: clip(d.fatalDetail, maxDetail)}}
	}
	return d.dst, d.rej
}

// decoder is a single-pass scanner for exactly the telemetry shape. Points go
// straight into dst; an element's points are dropped again if the element
// turns out bad, and all of them if the payload does.
type decoder struct {
	buf    []byte
	pos    int
	schema Schema
	now    time.Time // for elements without ts
	lo, hi time.Time // accepted ts window

	maxPoints, points int // points counts the accepted ones
	full              bool

	dst                []Point
	rej                []Rejection
	fatal, fatalDetail string // why the whole payload is void
}

// abort unwinds the scanner to run when the payload is void: the parser idiom
// of Effective Go, which keeps the error checks out of every step. The panic
// never leaves run.
type abort struct{}

func (d *decoder) run(scan func()) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			if _, void := r.(abort); !void {
				panic(r)
			}
			ok = false
		}
	}()
	scan()
	return true
}

func (d *decoder) fail(reason, format string, args ...any) {
	d.fatal, d.fatalDetail = reason, fmt.Sprintf(format, args...)
	panic(abort{})
}

func (d *decoder) syntax(want string) {
	if d.pos >= len(d.buf) {
		d.fail(ReasonMalformed, "unexpected end of input, want %s", want)
	}
	d.fail(ReasonMalformed, "unexpected %q at offset %d, want %s", d.buf[d.pos], d.pos, want)
}

// reject records a rejection in element idx (-1 for a lone object).
func (d *decoder) reject(idx int, reason string, metric []byte, format string, args ...any) {
	detail := fmt.Sprintf(format, args...)
	if idx >= 0 {
		detail = "element " + strconv.Itoa(idx) + ": " + detail
	}
	d.rej = append(d.rej, Rejection{Reason: reason, Detail: clip(detail, maxDetail), Metric: metricName(metric)})
}

func (d *decoder) payload() {
	var shape string
	switch d.ws(); d.peek() {
	case '{':
		d.element(-1, 0)
	case '[':
		d.pos++
		if d.ws(); d.peek() == ']' {
			d.pos++
			shape = "payload is an empty array"
			break
		}
		for idx := 0; ; idx++ {
			if d.ws(); d.peek() == '{' {
				d.element(idx, 1)
			} else {
				d.reject(idx, ReasonShape, nil, "is a %s, want an object", d.skip(1))
			}
			if d.ws(); d.peek() == ']' {
				d.pos++
				break
			}
			d.expect(',')
		}
	default:
		shape = "payload is a " + d.skip(0) + ", want an object or an array of objects"
	}
	if d.ws(); d.pos < len(d.buf) {
		d.syntax("end of input")
	}
	if shape != "" {
		d.fail(ReasonShape, "%s", shape)
	}
}

// element decodes one {"ts": ..., "metrics": {...}} object at d.pos, inside
// depth brackets; idx is its index in the payload array, or -1.
func (d *decoder) element(idx, depth int) {
	d.pos++
	start := len(d.dst)
	var (
		ts                 time.Time
		tsReason, tsDetail string
		hasTS, hasMetrics  bool
		repeated, shape    string
	)
	for first := true; d.next(first); first = false {
		key := d.key(true)
		switch {
		case string(key) == "ts" && !hasTS:
			hasTS = true
			ts, tsReason, tsDetail = d.timestamp(depth + 1)
		case string(key) == "metrics" && !hasMetrics:
			hasMetrics = true
			if d.peek() != '{' {
				shape = "metrics is a " + d.skip(depth+1) + ", want an object"
			} else if d.metrics(idx, depth+2) == 0 {
				shape = "metrics is empty"
			}
		case string(key) == "ts" || string(key) == "metrics":
			repeated = string(key)
			d.skip(depth + 1)
		default:
			d.reject(idx, ReasonUnknownField, nil, "unknown field %s, want \"ts\" or \"metrics\"", quote(key))
			d.skip(depth + 1)
		}
	}

	n := len(d.dst) - start
	switch {
	case repeated != "":
		d.reject(idx, ReasonDuplicate, nil, "field %q repeated", repeated)
	case !hasMetrics:
		d.reject(idx, ReasonShape, nil, "no \"metrics\" object")
	case shape != "":
		d.reject(idx, ReasonShape, nil, "%s", shape)
	case tsReason != "":
		d.reject(idx, tsReason, nil, "%s", tsDetail)
	case n > 0 && (d.full || d.points+n > d.maxPoints):
		d.full = true
		d.reject(idx, ReasonTooMany, nil, "%d points beyond the limit of %d per payload", n, d.maxPoints)
	default:
		if !hasTS {
			ts = d.now
		}
		for i := start; i < len(d.dst); i++ {
			d.dst[i].TS = ts
		}
		d.points += n
		return
	}
	d.dst = d.dst[:start]
}

// timestamp reads the value of a ts field: the time, or why the element is rejected.
func (d *decoder) timestamp(depth int) (t time.Time, reason, detail string) {
	var v []byte
	c := d.peek()
	switch {
	case c == '"':
		v = d.str(true)
	case c == '-' || isDigit(c):
		v = d.number()
	default:
		return t, ReasonTimestamp, "ts is a " + d.skip(depth) + ", want an RFC 3339 string or epoch milliseconds"
	}
	t, reason = parseTimestamp(v, c == '"')
	if reason == ReasonTimestamp {
		return t, reason, "ts " + quote(v) + " is not RFC 3339"
	}
	if reason == "" && !t.Before(d.lo) && !t.After(d.hi) {
		return t, "", ""
	}
	return t, ReasonWindow, "ts " + quote(v) + " outside [" + d.lo.Format(time.RFC3339) + ", " + d.hi.Format(time.RFC3339) + "]"
}

// metrics decodes a metrics object at d.pos whose values are inside depth
// brackets, appending its valid points to d.dst without ts. It returns the
// number of keys.
func (d *decoder) metrics(idx, depth int) (keys int) {
	d.pos++
	start, dups := len(d.dst), false
	// Metric ID → index in d.dst of its point, -1 without one, -2 once repeated.
	// Small, it lives on the stack.
	seen := make(map[int32]int, 8)
	for first := true; d.next(first); first = false {
		keys++
		key := d.key(true)
		spec, known := d.schema[string(key)]
		if !known {
			d.reject(idx, ReasonUnknownMetric, key, "unknown metric %s", quote(key))
			d.skip(depth)
			continue
		}
		if i, again := seen[spec.ID]; again {
			d.skip(depth)
			if i >= 0 {
				d.dst[i].Value = math.NaN() // never a value accepted: marks it for removal
			}
			if i != -2 {
				seen[spec.ID], dups = -2, true
				d.reject(idx, ReasonDuplicate, key, "metric %s repeated", quote(key))
			}
			continue
		}
		seen[spec.ID] = -1
		if c := d.peek(); c != '-' && !isDigit(c) {
			d.reject(idx, ReasonType, key, "metric %s is a %s, want a number", quote(key), d.skip(depth))
			continue
		}
		num := d.number()
		// A checked token fails to parse only by overflowing to ±Inf.
		switch v, err := strconv.ParseFloat(string(num), 64); {
		case err != nil || math.IsInf(v, 0):
			d.reject(idx, ReasonNonFinite, key, "metric %s: %s is not a finite float64", quote(key), clip(string(num), maxMetric))
		case v < spec.Min || v > spec.Max:
			d.reject(idx, ReasonRange, key, "metric %s: %s outside [%g, %g]", quote(key), clip(string(num), maxMetric), spec.Min, spec.Max)
		default:
			seen[spec.ID] = len(d.dst)
			d.dst = append(d.dst, Point{MetricID: spec.ID, Value: v})
		}
	}
	if dups {
		kept := slices.DeleteFunc(d.dst[start:], func(p Point) bool { return math.IsNaN(p.Value) })
		d.dst = d.dst[:start+len(kept)]
	}
	return keys
}

// skip checks and passes a value of any kind inside depth brackets, and
// returns its kind. It does not recurse: bit i of objs tells whether the i-th
// innermost open bracket is an object's, which caps nesting at 64.
func (d *decoder) skip(depth int) (kind string) {
	if kind = kinds[d.peek()]; kind == "" {
		kind = "number"
	}
	var objs uint64
	for open := 0; ; {
		switch c := d.peek(); {
		case c == '{' || c == '[':
			if depth+open >= maxDepth {
				d.fail(ReasonShape, "nesting deeper than %d levels at offset %d", maxDepth, d.pos)
			}
			d.pos++
			objs, open = objs<<1, open+1
			if c == '{' {
				objs |= 1
			}
			if d.ws(); d.peek() != "]}"[objs&1] {
				if objs&1 == 1 {
					d.key(false)
				}
				continue // to the first value inside
			}
		case c == '"':
			d.str(false)
		case c == '-' || isDigit(c):
			d.number()
		case literals[c] != "":
			d.literal(literals[c])
		default:
			d.syntax("a value")
		}
		// After a value: close brackets until one goes on with a comma.
		for ; open > 0; open-- {
			if d.ws(); d.peek() != "]}"[objs&1] {
				break
			}
			d.pos++
			objs >>= 1
		}
		if open == 0 {
			return kind
		}
		d.expect(',')
		if d.ws(); objs&1 == 1 {
			d.key(false)
		}
	}
}

var (
	kinds    = [256]string{'{': "object", '[': "array", '"': "string", 't': "bool", 'f': "bool", 'n': "null"}
	literals = [256]string{'t': "true", 'f': "false", 'n': "null"}
)

// next moves to the next member of an object (first: right after its '{')
// and reports whether there is one; at the end it passes the '}'.
func (d *decoder) next(first bool) bool {
	if d.ws(); d.peek() == '}' {
		d.pos++
		return false
	}
	if !first {
		d.expect(',')
		d.ws()
	}
	return true
}

// key reads a member's key, unescaped if decode, and passes the colon after it.
func (d *decoder) key(decode bool) []byte {
	if d.peek() != '"' {
		d.syntax("a key")
	}
	k := d.str(decode)
	d.expect(':')
	d.ws()
	return k
}

// str checks the string at d.pos — escapes, control characters, UTF-8 — and
// returns its contents, unescaped if decode.
func (d *decoder) str(decode bool) []byte {
	b, start, esc := d.buf, d.pos+1, false
	for i := start; i < len(b); {
		switch c := b[i]; {
		case c == '"':
			d.pos = i + 1
			if !esc || !decode {
				return b[start:i]
			}
			// Escapes are rare in telemetry: let encoding/json decode them,
			// so that keys read exactly as there (invalid surrogates too).
			var s string
			if err := json.Unmarshal(b[start-1:i+1], &s); err != nil {
				d.fail(ReasonMalformed, "string at offset %d: %v", start-1, err)
			}
			return []byte(s)
		case c == '\\':
			esc, d.pos = true, i
			switch e := d.peekAt(i + 1); {
			case e == 'u' && i+6 <= len(b) && isHex(b[i+2]) && isHex(b[i+3]) && isHex(b[i+4]) && isHex(b[i+5]):
				i += 6
			case e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't':
				i += 2
			default:
				d.fail(ReasonMalformed, "invalid escape in string at offset %d", i)
			}
		case c < 0x20:
			d.fail(ReasonMalformed, "control character 0x%02x in string at offset %d", c, i)
		case c < utf8.RuneSelf:
			i++
		default:
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && n == 1 {
				d.fail(ReasonMalformed, "invalid UTF-8 in string at offset %d", i)
			}
			i += n
		}
	}
	d.pos = len(b)
	d.syntax("'\"'")
	return nil
}

// number checks and passes the RFC 8259 number at d.pos and returns it.
func (d *decoder) number() []byte {
	start := d.pos
	if d.peek() == '-' {
		d.pos++
	}
	if d.peek() == '0' {
		d.pos++
	} else {
		d.digits()
	}
	if d.peek() == '.' {
		d.pos++
		d.digits()
	}
	if c := d.peek(); c == 'e' || c == 'E' {
		if d.pos++; d.peek() == '+' || d.peek() == '-' {
			d.pos++
		}
		d.digits()
	}
	return d.buf[start:d.pos]
}

func (d *decoder) digits() {
	start := d.pos
	for d.pos < len(d.buf) && isDigit(d.buf[d.pos]) {
		d.pos++
	}
	if d.pos == start {
		d.syntax("a digit")
	}
}

func (d *decoder) literal(want string) {
	if len(d.buf)-d.pos < len(want) || string(d.buf[d.pos:d.pos+len(want)]) != want {
		d.syntax(want)
	}
	d.pos += len(want)
}

func (d *decoder) expect(c byte) {
	if d.ws(); d.peek() != c {
		d.syntax(strconv.QuoteRune(rune(c)))
	}
	d.pos++
}

func (d *decoder) ws() {
	for d.pos < len(d.buf) && (d.buf[d.pos] == ' ' || d.buf[d.pos] == '\n' || d.buf[d.pos] == '\r' || d.buf[d.pos] == '\t') {
		d.pos++
	}
}

// peek returns the next byte, or 0 at the end (where a 0 would be invalid too).
func (d *decoder) peek() byte { return d.peekAt(d.pos) }

func (d *decoder) peekAt(i int) byte {
	if i < len(d.buf) {
		return d.buf[i]
	}
	return 0
}

// parseTimestamp converts a ts value — the unescaped text of a string when
// quoted, else a checked number token of epoch milliseconds — to UTC truncated
// to microseconds. reason is "" on success, else ReasonTimestamp for text that
// is not RFC 3339, or ReasonWindow for a number too far from 1970 for a time.
func parseTimestamp(v []byte, quoted bool) (time.Time, string) {
	if quoted {
		t, err := time.Parse(time.RFC3339Nano, string(v))
		if err != nil {
			return time.Time{}, ReasonTimestamp
		}
		return t.UTC().Truncate(time.Microsecond), ""
	}
	// Decimal arithmetic for the plain form: float64 falls short of a
	// microsecond on today's epoch milliseconds.
	neg := v[0] == '-'
	i := 0
	if neg {
		i = 1
	}
	var ms, ns int64
	for ; i < len(v) && isDigit(v[i]) && ms < maxEpochMs/10; i++ {
		ms = ms*10 + int64(v[i]-'0')
	}
	if i < len(v) && v[i] == '.' {
		i++
		for scale := int64(100_000); i < len(v) && isDigit(v[i]); i++ {
			ns += int64(v[i]-'0') * scale
			scale /= 10
		}
	}
	if i < len(v) { // an exponent, or too many integer digits
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil || math.Abs(f) >= maxEpochMs {
			return time.Time{}, ReasonWindow
		}
		whole := math.Floor(f)
		ms, ns, neg = int64(whole), int64((f-whole)*1e6), false
	}
	if neg {
		ms, ns = -ms, -ns
	}
	return time.UnixMilli(ms).Add(time.Duration(ns)).UTC().Truncate(time.Microsecond), ""
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isHex(c byte) bool { return isDigit(c) || 'a' <= c|0x20 && c|0x20 <= 'f' }

// quote renders payload text for a Detail: clipped, Go-quoted, so never with
// NUL or invalid UTF-8 (PostgreSQL text refuses both).
func quote(b []byte) string { return strconv.Quote(clip(string(b), maxMetric)) }

// metricName makes a key fit for Rejection.Metric: at most 64 bytes of whole
// runes, NUL replaced by U+FFFD. Keys reaching it are valid UTF-8.
func metricName(key []byte) string {
	out := make([]byte, 0, min(len(key), maxMetric))
	for _, r := range string(key) {
		if r == 0 {
			r = utf8.RuneError
		}
		if len(out)+utf8.RuneLen(r) > maxMetric {
			break
		}
		out = utf8.AppendRune(out, r)
	}
	return string(out)
}

// clip cuts s to at most n bytes without splitting a rune.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
