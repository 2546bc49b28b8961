package ingest

import (
	"bytes"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf16"
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
	maxDepth     = 64  // deepest nesting followed, counting the payload's own brackets
	maxDetail    = 200 // bytes of Rejection.Detail
	maxMetric    = 64  // bytes of Rejection.Metric
	linearSeen   = 32  // distinct known keys of one metrics object checked for repeats without a map
	maxEpochMs   = 1e15
	maxQuotedLen = 64 // bytes of payload text quoted in a Detail
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
	if l.MaxPayload <= 0 {
		l.MaxPayload = def.MaxPayload
	}
	if l.MaxPoints <= 0 {
		l.MaxPoints = def.MaxPoints
	}
	if l.MaxAge <= 0 {
		l.MaxAge = def.MaxAge
	}
	if l.MaxFuture <= 0 {
		l.MaxFuture = def.MaxFuture
	}
	return l
}

// Decode parses a telemetry payload and validates it against schema. It
// appends accepted points to dst and returns them, plus the rejections. Invalid
// parts are rejected individually and the rest is kept: a bad metric drops only
// that metric; a bad element of an array drops only that element. A payload that
// is not valid JSON, too large, or not an object/array of objects yields one
// rejection and no points. It never panics, whatever the input.
//
// Points are capped per whole element: the first element whose points would go
// beyond lim.MaxPoints, and every later element with points, is rejected.
// Elements without ts get now; those with one are checked against
// [now-MaxAge, now+MaxFuture] after truncation to microseconds.
func Decode(payload []byte, schema Schema, now time.Time, lim Limits, dst []Point) ([]Point, []Rejection) {
	lim = lim.orDefaults()
	if len(payload) > lim.MaxPayload {
		return dst, []Rejection{{Reason: ReasonTooLarge,
			Detail: fmt.Sprintf("payload is %d bytes, limit is %d", len(payload), lim.MaxPayload)}}
	}
	now = now.UTC()
	d := decoder{buf: payload, schema: schema, maxPoints: lim.MaxPoints, dst: dst,
		now: now.Truncate(time.Microsecond), lo: now.Add(-lim.MaxAge), hi: now.Add(lim.MaxFuture)}
	d.payload()
	if d.fatal != "" {
		return dst, []Rejection{{Reason: d.fatal, Detail: clip(d.fatalDetail, maxDetail)}}
	}
	return d.dst, d.rej
}

// decoder is a single-pass scanner for exactly the telemetry shape. Points go
// straight into dst; an element's points are dropped again if the element
// turns out bad, and everything is dropped on a fatal error.
type decoder struct {
	buf    []byte
	pos    int
	schema Schema
	now    time.Time // for elements without ts
	lo, hi time.Time // accepted ts window

	maxPoints, points int // points counts the accepted ones
	full              bool

	dst         []Point
	rej         []Rejection
	fatal       string // reason voiding the whole payload, "" while it is fine
	fatalDetail string

	scratch []byte         // unescaped strings
	seen    []seenKey      // known keys of the current metrics object
	seenIdx map[string]int // index into seen once it grows beyond linearSeen
}

type seenKey struct {
	key   []byte
	id    int32
	point int // index in dst of this key's point, or -1
	dup   bool
}

func (d *decoder) fail(reason, format string, args ...any) bool {
	if d.fatal == "" {
		d.fatal, d.fatalDetail = reason, fmt.Sprintf(format, args...)
	}
	return false
}

func (d *decoder) syntax(want string) bool {
	if d.pos >= len(d.buf) {
		return d.fail(ReasonMalformed, "unexpected end of input, want %s", want)
	}
	return d.fail(ReasonMalformed, "unexpected %q at offset %d, want %s", d.buf[d.pos], d.pos, want)
}

// reject records a rejection of element idx (-1 for a lone object).
func (d *decoder) reject(idx int, reason string, metric []byte, format string, args ...any) {
	detail := fmt.Sprintf(format, args...)
	if idx >= 0 {
		detail = "element " + strconv.Itoa(idx) + ": " + detail
	}
	d.rej = append(d.rej, Rejection{Reason: reason, Detail: clip(detail, maxDetail), Metric: metricName(metric)})
}

func (d *decoder) payload() {
	d.ws()
	var shape string
	switch d.peek() {
	case '{':
		if !d.element(-1, 0) {
			return
		}
	case '[':
		empty, ok := d.array()
		if !ok {
			return
		}
		if empty {
			shape = "payload is an empty array"
		}
	default:
		kind, ok := d.skip(0)
		if !ok {
			return
		}
		shape = "payload is a " + kind + ", want an object or an array of objects"
	}
	d.ws()
	if d.pos < len(d.buf) {
		d.syntax("end of input")
		return
	}
	if shape != "" {
		d.fail(ReasonShape, "%s", shape)
	}
}

func (d *decoder) array() (empty, ok bool) {
	d.pos++
	d.ws()
	if d.peek() == ']' {
		d.pos++
		return true, true
	}
	for idx := 0; ; idx++ {
		d.ws()
		if d.peek() == '{' {
			if !d.element(idx, 1) {
				return false, false
			}
		} else {
			kind, ok := d.skip(1)
			if !ok {
				return false, false
			}
			d.reject(idx, ReasonShape, nil, "is a %s, want an object", kind)
		}
		d.ws()
		switch d.peek() {
		case ',':
			d.pos++
		case ']':
			d.pos++
			return false, true
		default:
			return false, d.syntax("',' or ']'")
		}
	}
}

// element decodes one {"ts": ..., "metrics": {...}} object at d.pos, inside
// depth containers; idx is its index in the payload array, or -1.
func (d *decoder) element(idx, depth int) bool {
	d.pos++
	start := len(d.dst)
	var (
		ts                 time.Time
		tsReason, tsDetail string
		hasTS, hasMetrics  bool
		repeated, shape    string
	)
	for first := true; ; first = false {
		key, _, done, ok := d.member(first)
		if !ok {
			return false
		}
		if done {
			break
		}
		switch {
		case string(key) == "ts" && !hasTS:
			hasTS = true
			c := d.peek()
			if c == '"' || c == '-' || isDigit(c) {
				v, quoted, ok := d.scalar()
				if !ok {
					return false
				}
				ts, tsReason = timestamp(v, quoted)
				if tsReason == ReasonTimestamp {
					tsDetail = "ts " + quote(v) + " is not RFC 3339"
				} else if tsReason == "" && (ts.Before(d.lo) || ts.After(d.hi)) {
					tsReason = ReasonWindow
				}
				if tsReason == ReasonWindow {
					tsDetail = "ts " + quote(v) + " outside [" + d.lo.Format(time.RFC3339) + ", " + d.hi.Format(time.RFC3339) + "]"
				}
				break
			}
			kind, ok := d.skip(depth + 1)
			if !ok {
				return false
			}
			tsReason, tsDetail = ReasonTimestamp, "ts is a "+kind+", want an RFC 3339 string or epoch milliseconds"
		case string(key) == "metrics" && !hasMetrics:
			hasMetrics = true
			if d.peek() != '{' {
				kind, ok := d.skip(depth + 1)
				if !ok {
					return false
				}
				shape = "metrics is a " + kind + ", want an object"
				break
			}
			n, ok := d.metrics(idx, depth+1)
			if !ok {
				return false
			}
			if n == 0 {
				shape = "metrics is empty"
			}
		default:
			if string(key) == "ts" || string(key) == "metrics" {
				repeated = string(key)
			} else {
				d.reject(idx, ReasonUnknownField, nil, "unknown field %s, want \"ts\" or \"metrics\"", quote(key))
			}
			if _, ok := d.skip(depth + 1); !ok {
				return false
			}
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
		return true
	}
	d.dst = d.dst[:start]
	return true
}

// metrics decodes a metrics object at d.pos, inside depth containers, appending
// its valid points to d.dst without their ts. It returns the number of keys.
func (d *decoder) metrics(idx, depth int) (int, bool) {
	d.pos++
	start := len(d.dst)
	d.seen = d.seen[:0]
	if d.seenIdx != nil {
		clear(d.seenIdx)
	}
	n, dups := 0, false
	for first := true; ; first = false {
		key, esc, done, ok := d.member(first)
		if !ok {
			return 0, false
		}
		if done {
			break
		}
		n++
		spec, known := d.schema[string(key)]
		if !known {
			d.reject(idx, ReasonUnknownMetric, key, "unknown metric %s", quote(key))
			if _, ok := d.skip(depth + 1); !ok {
				return 0, false
			}
			continue
		}
		s, again := d.see(key, esc, spec.ID)
		if c := d.peek(); again || (c != '-' && !isDigit(c)) {
			kind, ok := d.skip(depth + 1)
			switch {
			case !ok:
				return 0, false
			case !again:
				d.reject(idx, ReasonType, key, "metric %s is a %s, want a number", quote(key), kind)
			case !d.seen[s].dup:
				d.seen[s].dup, dups = true, true
				d.reject(idx, ReasonDuplicate, key, "metric %s repeated", quote(key))
			}
			continue
		}
		num, ok := d.number()
		if !ok {
			return 0, false
		}
		// A checked token only fails to parse by overflowing to ±Inf.
		v, err := strconv.ParseFloat(string(num), 64)
		switch {
		case err != nil || math.IsInf(v, 0) || math.IsNaN(v):
			d.reject(idx, ReasonNonFinite, key, "metric %s: %s is not a finite float64", quote(key), clip(string(num), maxQuotedLen))
		case v < spec.Min || v > spec.Max:
			d.reject(idx, ReasonRange, key, "metric %s: %s outside [%g, %g]", quote(key), clip(string(num), maxQuotedLen), spec.Min, spec.Max)
		default:
			d.seen[s].point = len(d.dst)
			d.dst = append(d.dst, Point{MetricID: spec.ID, Value: v})
		}
	}
	if dups {
		// Points were appended in first-seen order of their keys: keep those of
		// keys seen once.
		w := start
		for _, s := range d.seen {
			if s.point >= 0 && !s.dup {
				d.dst[w] = d.dst[s.point]
				w++
			}
		}
		d.dst = d.dst[:w]
	}
	return n, true
}

// see registers a known key of the current metrics object and reports whether
// it was already there.
func (d *decoder) see(key []byte, esc bool, id int32) (int, bool) {
	if len(d.seen) > linearSeen {
		if i, ok := d.seenIdx[string(key)]; ok {
			return i, true
		}
	} else {
		for i := range d.seen {
			if d.seen[i].id == id && bytes.Equal(d.seen[i].key, key) {
				return i, true
			}
		}
	}
	if esc {
		key = bytes.Clone(key) // it lives in d.scratch
	}
	d.seen = append(d.seen, seenKey{key: key, id: id, point: -1})
	if len(d.seen) > linearSeen {
		if d.seenIdx == nil {
			d.seenIdx = make(map[string]int)
		}
		if len(d.seenIdx) == 0 {
			for i, s := range d.seen {
				d.seenIdx[string(s.key)] = i
			}
		}
		d.seenIdx[string(key)] = len(d.seen) - 1
	}
	return len(d.seen) - 1, false
}

// member moves to the next member of an object and past its colon; first says
// the object was just opened. done reports the closing brace. The key is
// unescaped (then esc is true and it lives in d.scratch until the next string).
func (d *decoder) member(first bool) (key []byte, esc, done, ok bool) {
	d.ws()
	if d.peek() == '}' {
		d.pos++
		return nil, false, true, true
	}
	if !first {
		if d.peek() != ',' {
			return nil, false, false, d.syntax("',' or '}'")
		}
		d.pos++
		d.ws()
	}
	if d.peek() != '"' {
		return nil, false, false, d.syntax("a key")
	}
	raw, esc, ok := d.str()
	if !ok {
		return nil, false, false, false
	}
	if esc {
		raw = d.unescape(raw)
	}
	d.ws()
	if d.peek() != ':' {
		return nil, false, false, d.syntax("':'")
	}
	d.pos++
	d.ws()
	return raw, esc, false, true
}

// scalar reads a string (returned unescaped, quoted true) or a number token.
func (d *decoder) scalar() (v []byte, quoted, ok bool) {
	if d.peek() != '"' {
		v, ok = d.number()
		return v, false, ok
	}
	v, esc, ok := d.str()
	if esc {
		v = d.unescape(v)
	}
	return v, true, ok
}

// skip checks and passes one value of any kind at d.pos, inside depth
// containers. It does not recurse: bit i of objs tells whether the i-th open
// container (from the innermost) is an object, so nesting is capped at 64.
func (d *decoder) skip(depth int) (kind string, ok bool) {
	kind = kindOf(d.peek())
	var objs uint64
	open := 0
	for {
		switch c := d.peek(); {
		case c == '{' || c == '[':
			if depth+open >= maxDepth {
				return kind, d.fail(ReasonShape, "nesting deeper than %d levels at offset %d", maxDepth, d.pos)
			}
			d.pos++
			objs <<= 1
			if c == '{' {
				objs |= 1
			}
			open++
			d.ws()
			if c := d.peek(); c != '}' && c != ']' {
				if objs&1 == 1 && !d.key() {
					return kind, false
				}
				continue // to the first value inside
			}
		case c == '"':
			if _, _, ok := d.str(); !ok {
				return kind, false
			}
		case c == '-' || isDigit(c):
			if _, ok := d.number(); !ok {
				return kind, false
			}
		case c == 't' || c == 'f' || c == 'n':
			if !d.literal(literals[c]) {
				return kind, false
			}
		default:
			return kind, d.syntax("a value")
		}
		// After a value: close containers until one continues with a comma.
		for {
			if open == 0 {
				return kind, true
			}
			d.ws()
			c := d.peek()
			if c == ',' {
				d.pos++
				d.ws()
				if objs&1 == 1 && !d.key() {
					return kind, false
				}
				break
			}
			if c != "]}"[objs&1] {
				return kind, d.syntax("',' or a closing bracket")
			}
			d.pos++
			objs >>= 1
			open--
		}
	}
}

// key passes a key, its colon and the whitespace after, for skip.
func (d *decoder) key() bool {
	if d.peek() != '"' {
		return d.syntax("a key")
	}
	if _, _, ok := d.str(); !ok {
		return false
	}
	d.ws()
	if d.peek() != ':' {
		return d.syntax("':'")
	}
	d.pos++
	d.ws()
	return true
}

// str checks the string at d.pos (its opening quote) — escapes, control
// characters, UTF-8 — and returns its raw contents and whether it has escapes.
func (d *decoder) str() (raw []byte, esc, ok bool) {
	b := d.buf
	start := d.pos + 1
	for i := start; i < len(b); {
		switch c := b[i]; {
		case c == '"':
			d.pos = i + 1
			return b[start:i], esc, true
		case c == '\\':
			esc = true
			d.pos = i
			if i+1 >= len(b) {
				return nil, false, d.syntax("an escape")
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || hex4(b[i+2:i+6]) < 0 {
					return nil, false, d.fail(ReasonMalformed, "invalid \\u escape at offset %d", i)
				}
				i += 6
			default:
				return nil, false, d.fail(ReasonMalformed, "invalid escape at offset %d", i)
			}
		case c < 0x20:
			return nil, false, d.fail(ReasonMalformed, "control character 0x%02x in string at offset %d", c, i)
		case c < utf8.RuneSelf:
			i++
		default:
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && n == 1 {
				return nil, false, d.fail(ReasonMalformed, "invalid UTF-8 in string at offset %d", i)
			}
			i += n
		}
	}
	d.pos = len(b)
	return nil, false, d.syntax("end of string")
}

// unescape decodes a string checked by str into d.scratch, turning invalid
// surrogates into U+FFFD as encoding/json does.
func (d *decoder) unescape(raw []byte) []byte {
	out := d.scratch[:0]
	for i := 0; i < len(raw); {
		if raw[i] != '\\' {
			out = append(out, raw[i])
			i++
			continue
		}
		if raw[i+1] != 'u' {
			out = append(out, unescaped[raw[i+1]])
			i += 2
			continue
		}
		r := rune(hex4(raw[i+2 : i+6]))
		i += 6
		if utf16.IsSurrogate(r) {
			r2 := rune(-1)
			if i+6 <= len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
				r2 = rune(hex4(raw[i+2 : i+6]))
			}
			if r = utf16.DecodeRune(r, r2); r != utf8.RuneError {
				i += 6
			}
		}
		out = utf8.AppendRune(out, r)
	}
	d.scratch = out
	return out
}

var literals = [256]string{'t': "true", 'f': "false", 'n': "null"}

var unescaped = [256]byte{'"': '"', '\\': '\\', '/': '/', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t'}

// number checks and returns the RFC 8259 number token at d.pos.
func (d *decoder) number() ([]byte, bool) {
	b, i := d.buf, d.pos
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && isDigit(b[i]):
		i = digits(b, i)
	default:
		d.pos = i
		return nil, d.syntax("a digit")
	}
	if i < len(b) && b[i] == '.' {
		if j := digits(b, i+1); j > i+1 {
			i = j
		} else {
			d.pos = j
			return nil, d.syntax("a digit after '.'")
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			d.pos = j
			return nil, d.syntax("an exponent digit")
		}
		i = j
	}
	num := b[d.pos:i]
	d.pos = i
	return num, true
}

func (d *decoder) literal(want string) bool {
	if len(d.buf)-d.pos < len(want) || string(d.buf[d.pos:d.pos+len(want)]) != want {
		return d.syntax(want)
	}
	d.pos += len(want)
	return true
}

func (d *decoder) ws() {
	for d.pos < len(d.buf) {
		switch d.buf[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

// peek returns the next byte, or 0 at the end (a 0 byte is never valid there either).
func (d *decoder) peek() byte {
	if d.pos < len(d.buf) {
		return d.buf[d.pos]
	}
	return 0
}

// timestamp converts a ts value — the unescaped text of a string when quoted,
// else a checked number token of epoch milliseconds — to UTC truncated to
// microseconds. reason is "" on success, else ReasonTimestamp for text that is
// not RFC 3339, or ReasonWindow for a number too far from 1970 to be a time.
func timestamp(v []byte, quoted bool) (t time.Time, reason string) {
	if quoted {
		t, err := time.Parse(time.RFC3339Nano, string(v))
		if err != nil {
			return time.Time{}, ReasonTimestamp
		}
		return t.UTC().Truncate(time.Microsecond), ""
	}
	neg := v[0] == '-'
	i := 0
	if neg {
		i = 1
	}
	// Exact decimal arithmetic for the plain form: float64 is short of
	// microsecond precision on today's epoch milliseconds.
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

func digits(b []byte, i int) int {
	for i < len(b) && isDigit(b[i]) {
		i++
	}
	return i
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// hex4 decodes four hex digits, or returns -1.
func hex4(b []byte) int {
	n := 0
	for _, c := range b[:4] {
		switch {
		case isDigit(c):
			n = n<<4 | int(c-'0')
		case 'a' <= c && c <= 'f':
			n = n<<4 | int(c-'a'+10)
		case 'A' <= c && c <= 'F':
			n = n<<4 | int(c-'A'+10)
		default:
			return -1
		}
	}
	return n
}

func kindOf(c byte) string {
	switch c {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	}
	return "number"
}

// quote renders payload text for a Detail: clipped, Go-quoted, so never with
// NUL or invalid UTF-8 (PostgreSQL text refuses both).
func quote(b []byte) string { return strconv.Quote(clip(string(b), maxQuotedLen)) }

// metricName is a key fit for Rejection.Metric: at most 64 bytes of whole
// runes, NUL replaced by U+FFFD. Keys reaching it are valid UTF-8.
func metricName(key []byte) string {
	if len(key) == 0 {
		return ""
	}
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
