package ingest

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var testSchema = Schema{
	"temp": {ID: 1, Min: -50, Max: 1200},
	"p":    {ID: 2, Min: 0, Max: 1000},
	"rpm":  {ID: 3, Min: 0, Max: 10000},
	"on":   {ID: 4, Min: 0, Max: 1},
	"hum":  {ID: 5, Min: 0, Max: 100},
}

// testNow has nanoseconds so that truncation to microseconds shows.
var testNow = time.Date(2024, 6, 1, 12, 0, 0, 789, time.UTC)

func mustUTC(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t.UTC()
}

func mkPoint(id int32, v float64, ts time.Time) Point { return Point{TS: ts, MetricID: id, Value: v} }

func nowTS() time.Time { return testNow.Truncate(time.Microsecond) }

func nested(open, inner, close string, n int) string {
	return strings.Repeat(open, n) + inner + strings.Repeat(close, n)
}

func TestDecode(t *testing.T) {
	now := nowTS()
	tests := []struct {
		name    string
		payload string // or file, under testdata/payloads
		file    string
		lim     Limits
		want    []Point
		reasons []string
	}{
		{name: "single object", file: "single.json", want: []Point{
			mkPoint(1, 21.5, mustUTC("2024-06-01T11:59:30.123456Z")), mkPoint(2, 101.325, mustUTC("2024-06-01T11:59:30.123456Z")),
			mkPoint(3, 1480, mustUTC("2024-06-01T11:59:30.123456Z")), mkPoint(4, 1, mustUTC("2024-06-01T11:59:30.123456Z")),
			mkPoint(5, 45.2, mustUTC("2024-06-01T11:59:30.123456Z")),
		}},
		{name: "array, epoch ms, sub-ms, missing ts", file: "array.json", want: []Point{
			mkPoint(1, 20.25, mustUTC("2024-06-01T11:59:00Z")), mkPoint(2, 100, mustUTC("2024-06-01T11:59:00Z")),
			mkPoint(1, 20.5, mustUTC("2024-06-01T11:59:10.0005Z")),
			mkPoint(3, 0, now), mkPoint(4, 0, now),
		}},
		{name: "RFC 3339 with offset", file: "offset.json", want: []Point{mkPoint(5, 99.5, mustUTC("2024-06-01T11:59:00.5Z"))}},
		{name: "valid metric kept next to bad ones", file: "mixed.json",
			want: []Point{mkPoint(1, 1050, now)}, reasons: []string{ReasonUnknownMetric, ReasonType}},
		{name: "hostile array", file: "hostile.json",
			want: []Point{mkPoint(1, 1.5, mustUTC("2024-06-01T11:58:00Z")), mkPoint(5, 50, now)},
			reasons: []string{ReasonWindow, ReasonShape, ReasonType, ReasonType, ReasonType, ReasonType, ReasonType,
				ReasonNonFinite, ReasonRange, ReasonType, ReasonType, ReasonUnknownField, ReasonUnknownField, ReasonShape,
				ReasonDuplicate, ReasonTimestamp}},

		// Timestamps.
		{name: "missing ts is now", payload: `{"metrics":{"temp":1}}`, want: []Point{mkPoint(1, 1, now)}},
		{name: "epoch ms with exponent", payload: `{"ts":1.71724314e12,"metrics":{"temp":1}}`,
			want: []Point{mkPoint(1, 1, mustUTC("2024-06-01T11:59:00Z"))}},
		{name: "epoch ms truncated to µs", payload: `{"ts":1717243140000.1239999,"metrics":{"temp":1}}`,
			want: []Point{mkPoint(1, 1, mustUTC("2024-06-01T11:59:00.000123Z"))}},
		{name: "escaped ts field and value", payload: `{"\u0074s":"2024-06-01T11:59:00\u005a","metrics":{"temp":1}}`,
			want: []Point{mkPoint(1, 1, mustUTC("2024-06-01T11:59:00Z"))}},
		{name: "year 3000", payload: `{"ts":"3000-01-01T00:00:00Z","metrics":{"temp":1}}`, reasons: []string{ReasonWindow}},
		{name: "epoch ms in year 3000", payload: `{"ts":32503680000000,"metrics":{"temp":1}}`, reasons: []string{ReasonWindow}},
		{name: "huge epoch ms", payload: `{"ts":1e300,"metrics":{"temp":1}}`, reasons: []string{ReasonWindow}},
		{name: "negative epoch ms", payload: `{"ts":-1.5,"metrics":{"temp":1}}`, reasons: []string{ReasonWindow}},
		{name: "8 days old", payload: `{"ts":"2024-05-24T12:00:00Z","metrics":{"temp":1}}`, reasons: []string{ReasonWindow}},
		{name: "11 minutes ahead", payload: `{"ts":"2024-06-01T12:11:00Z","metrics":{"temp":1}}`, reasons: []string{ReasonWindow}},
		{name: "window edges included", payload: `[{"ts":"2024-06-01T12:10:00Z","metrics":{"temp":1}},{"ts":"2024-05-25T12:00:00.000001Z","metrics":{"temp":2}}]`,
			want: []Point{mkPoint(1, 1, mustUTC("2024-06-01T12:10:00Z")), mkPoint(1, 2, mustUTC("2024-05-25T12:00:00.000001Z"))}},
		{name: "unparsable ts", payload: `{"ts":"yesterday","metrics":{"temp":1}}`, reasons: []string{ReasonTimestamp}},
		{name: "ts with a space", payload: `{"ts":"2024-06-01 11:59:00Z","metrics":{"temp":1}}`, reasons: []string{ReasonTimestamp}},
		{name: "ts bool", payload: `{"ts":true,"metrics":{"temp":1}}`, reasons: []string{ReasonTimestamp}},
		{name: "ts null", payload: `{"ts":null,"metrics":{"temp":1}}`, reasons: []string{ReasonTimestamp}},
		{name: "ts object", payload: `{"ts":{"ms":1},"metrics":{"temp":1}}`, reasons: []string{ReasonTimestamp}},
		{name: "bad ts keeps metric rejections", payload: `{"metrics":{"x":1,"temp":1},"ts":"x"}`,
			reasons: []string{ReasonUnknownMetric, ReasonTimestamp}},

		// Values.
		{name: "NaN literal", payload: `{"metrics":{"temp":NaN}}`, reasons: []string{ReasonMalformed}},
		{name: "Infinity literal", payload: `{"metrics":{"temp":-Infinity}}`, reasons: []string{ReasonMalformed}},
		{name: "NaN and Infinity strings", payload: `{"metrics":{"temp":"NaN","p":"Infinity","hum":3}}`,
			want: []Point{mkPoint(5, 3, now)}, reasons: []string{ReasonType, ReasonType}},
		{name: "number as string", payload: `{"metrics":{"temp":"12.5"}}`, reasons: []string{ReasonType}},
		{name: "bool null object array", payload: `{"metrics":{"temp":true,"p":null,"rpm":{},"on":[0]}}`,
			reasons: []string{ReasonType, ReasonType, ReasonType, ReasonType}},
		{name: "overflow", payload: `{"metrics":{"temp":1e400,"p":-1e400,"hum":1e-400}}`,
			want: []Point{mkPoint(5, 0, now)}, reasons: []string{ReasonNonFinite, ReasonNonFinite}},
		{name: "range bounds inclusive", payload: `{"metrics":{"temp":-50,"p":1000,"rpm":-0.001,"hum":100.0001}}`,
			want: []Point{mkPoint(1, -50, now), mkPoint(2, 1000, now)}, reasons: []string{ReasonRange, ReasonRange}},

		// Keys.
		{name: "unknown metric", payload: `{"metrics":{"bogus":1,"temp":2}}`,
			want: []Point{mkPoint(1, 2, now)}, reasons: []string{ReasonUnknownMetric}},
		{name: "case-variant metric", payload: `{"metrics":{"Temp":1,"temp":2}}`,
			want: []Point{mkPoint(1, 2, now)}, reasons: []string{ReasonUnknownMetric}},
		{name: "case-variant fields", payload: `{"TS":"2024-06-01T11:59:00Z","Metrics":{"temp":1}}`,
			reasons: []string{ReasonUnknownField, ReasonUnknownField, ReasonShape}},
		{name: "unknown field keeps element", payload: `{"device":"d1","metrics":{"temp":1}}`,
			want: []Point{mkPoint(1, 1, now)}, reasons: []string{ReasonUnknownField}},
		{name: "NUL in key", payload: `{"metrics":{"te\u0000mp":1}}`, reasons: []string{ReasonUnknownMetric}},
		{name: "escaped metric key", payload: `{"metrics":{"te\u006dp":1,"\/p":2}}`,
			want: []Point{mkPoint(1, 1, now)}, reasons: []string{ReasonUnknownMetric}},
		{name: "duplicate metric", payload: `{"metrics":{"temp":1,"p":2,"temp":3}}`,
			want: []Point{mkPoint(2, 2, now)}, reasons: []string{ReasonDuplicate}},
		{name: "duplicate metric thrice, once bad", payload: `{"metrics":{"temp":"x","temp":1,"temp":2,"hum":1}}`,
			want: []Point{mkPoint(5, 1, now)}, reasons: []string{ReasonType, ReasonDuplicate}},
		{name: "duplicate metric, escaped", payload: `{"metrics":{"temp":1,"te\u006dp":2}}`, reasons: []string{ReasonDuplicate}},
		{name: "duplicate ts", payload: `{"ts":"2024-06-01T11:59:00Z","ts":1717243140000,"metrics":{"temp":1}}`,
			reasons: []string{ReasonDuplicate}},
		{name: "duplicate metrics", payload: `{"metrics":{"temp":1},"metrics":{"p":1}}`, reasons: []string{ReasonDuplicate}},

		// Shape.
		{name: "empty array", payload: `[]`, reasons: []string{ReasonShape}},
		{name: "empty object", payload: `{}`, reasons: []string{ReasonShape}},
		{name: "empty metrics", payload: `{"metrics":{}}`, reasons: []string{ReasonShape}},
		{name: "metrics array", payload: `{"metrics":[{"temp":1}]}`, reasons: []string{ReasonShape}},
		{name: "top-level number", payload: `42`, reasons: []string{ReasonShape}},
		{name: "top-level null", payload: ` null `, reasons: []string{ReasonShape}},
		{name: "bad elements dropped alone", payload: `[{"metrics":{"temp":1}},42,[{"metrics":{"temp":2}}],"x"]`,
			want: []Point{mkPoint(1, 1, now)}, reasons: []string{ReasonShape, ReasonShape, ReasonShape}},
		{name: "deep nesting", payload: nested("[", "", "]", 100_000), reasons: []string{ReasonShape}},
		{name: "deep nesting in a value", payload: `{"metrics":{"temp":` + nested(`{"a":[`, "1", "]}", 40) + `}}`,
			reasons: []string{ReasonShape}},
		{name: "nesting within bounds", payload: `{"metrics":{"hum":1,"temp":` + nested("[", "1", "]", 60) + `}}`,
			want: []Point{mkPoint(5, 1, now)}, reasons: []string{ReasonType}},
		{name: "whitespace everywhere", payload: " \r\n[\t{ \"ts\" :\n1717243140000 , \"metrics\" : { \"temp\" : -1.5e1 } } ]\n",
			want: []Point{mkPoint(1, -15, mustUTC("2024-06-01T11:59:00Z"))}},

		// Malformed.
		{name: "empty payload", payload: ``, reasons: []string{ReasonMalformed}},
		{name: "truncated", payload: `{"metrics":{"temp":1`, reasons: []string{ReasonMalformed}},
		{name: "trailing comma", payload: `{"metrics":{"temp":1,}}`, reasons: []string{ReasonMalformed}},
		{name: "trailing garbage", payload: `{"metrics":{"temp":1}} x`, reasons: []string{ReasonMalformed}},
		{name: "second value", payload: `{"metrics":{"temp":1}}{}`, reasons: []string{ReasonMalformed}},
		{name: "garbage after bad shape", payload: `[] x`, reasons: []string{ReasonMalformed}},
		{name: "leading zero", payload: `{"metrics":{"temp":01}}`, reasons: []string{ReasonMalformed}},
		{name: "plus sign", payload: `{"metrics":{"temp":+1}}`, reasons: []string{ReasonMalformed}},
		{name: "bare fraction", payload: `{"metrics":{"temp":.5}}`, reasons: []string{ReasonMalformed}},
		{name: "dangling point", payload: `{"metrics":{"temp":1.}}`, reasons: []string{ReasonMalformed}},
		{name: "single quotes", payload: `{'metrics':{'temp':1}}`, reasons: []string{ReasonMalformed}},
		{name: "invalid UTF-8 in key", payload: "{\"metrics\":{\"te\xffmp\":1}}", reasons: []string{ReasonMalformed}},
		{name: "invalid UTF-8 in skipped value", payload: "{\"metrics\":{\"temp\":1},\"x\":\"\xed\xa0\x80\"}", reasons: []string{ReasonMalformed}},
		{name: "control character in string", payload: "{\"metrics\":{\"temp\":1},\"x\":\"a\tb\"}", reasons: []string{ReasonMalformed}},
		{name: "bad escape", payload: `{"metrics":{"te\qmp":1}}`, reasons: []string{ReasonMalformed}},
		{name: "bad unicode escape", payload: `{"metrics":{"te\u00zzmp":1}}`, reasons: []string{ReasonMalformed}},
		{name: "mismatched brackets in skipped value", payload: `{"x":[1},"metrics":{"temp":1}}`, reasons: []string{ReasonMalformed}},
		{name: "bad literal", payload: `{"metrics":{"temp":1},"x":nul}`, reasons: []string{ReasonMalformed}},
		{name: "malformed after valid points", payload: `[{"metrics":{"temp":1}},{"metrics":{"temp":2}]`, reasons: []string{ReasonMalformed}},

		// Limits.
		{name: "1 MB payload", payload: `{"metrics":{"temp":1},"pad":"` + strings.Repeat("x", 1<<20) + `"}`,
			reasons: []string{ReasonTooLarge}},
		{name: "too many points", lim: Limits{MaxPoints: 3},
			payload: `[{"metrics":{"temp":1,"p":2}},{"metrics":{"temp":3,"p":4}},{"metrics":{"temp":5}},{"metrics":{"x":1}}]`,
			want:    []Point{mkPoint(1, 1, now), mkPoint(2, 2, now)},
			reasons: []string{ReasonTooMany, ReasonTooMany, ReasonUnknownMetric}},
		{name: "exactly max points", lim: Limits{MaxPoints: 3},
			payload: `[{"metrics":{"temp":1,"p":2}},{"metrics":{"temp":3}}]`,
			want:    []Point{mkPoint(1, 1, now), mkPoint(2, 2, now), mkPoint(1, 3, now)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			payload := []byte(tt.payload)
			if tt.file != "" {
				var err error
				if payload, err = os.ReadFile(filepath.Join("testdata", "payloads", tt.file)); err != nil {
					t.Fatal(err)
				}
			}
			got, rejs := Decode(payload, testSchema, testNow, tt.lim, nil)
			if !pointsEqual(got, tt.want) {
				t.Errorf("points:\n got %v\nwant %v", got, tt.want)
			}
			reasons := make([]string, 0, len(rejs))
			for _, r := range rejs {
				reasons = append(reasons, r.Reason)
			}
			if !reflect.DeepEqual(reasons, append([]string{}, tt.reasons...)) {
				t.Errorf("reasons: got %q, want %q\n%v", reasons, tt.reasons, rejs)
			}
			checkRejections(t, rejs)
		})
	}
}

func pointsEqual(a, b []Point) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].TS.Equal(b[i].TS) || a[i].TS.Location() != time.UTC || a[i].MetricID != b[i].MetricID ||
			math.Float64bits(a[i].Value) != math.Float64bits(b[i].Value) {
			return false
		}
	}
	return true
}

var knownReasons = map[string]bool{
	ReasonMalformed: true, ReasonTooLarge: true, ReasonShape: true, ReasonTimestamp: true, ReasonWindow: true,
	ReasonUnknownMetric: true, ReasonType: true, ReasonNonFinite: true, ReasonRange: true, ReasonDuplicate: true,
	ReasonTooMany: true, ReasonUnknownField: true,
}

// checkRejections checks what the dead-letter table relies on: a known reason,
// bounded texts that PostgreSQL accepts (valid UTF-8, no NUL).
func checkRejections(t *testing.T, rejs []Rejection) {
	t.Helper()
	for _, r := range rejs {
		if !knownReasons[r.Reason] {
			t.Errorf("unknown reason %q", r.Reason)
		}
		if r.Detail == "" || len(r.Detail) > maxDetail || !utf8.ValidString(r.Detail) || strings.ContainsRune(r.Detail, 0) {
			t.Errorf("bad detail %q", r.Detail)
		}
		if len(r.Metric) > maxMetric || !utf8.ValidString(r.Metric) || strings.ContainsRune(r.Metric, 0) {
			t.Errorf("bad metric %q", r.Metric)
		}
	}
}

func TestDecodeRejectionText(t *testing.T) {
	long := strings.Repeat("é", 100) // 200 bytes: clipped on a rune boundary
	_, rejs := Decode([]byte(`{"metrics":{"`+long+`":1,"te\u0000mp":2,"temp":"x"}}`), testSchema, testNow, Limits{}, nil)
	checkRejections(t, rejs)
	if len(rejs) != 3 {
		t.Fatalf("got %v", rejs)
	}
	if want := strings.Repeat("é", 32); rejs[0].Metric != want {
		t.Errorf("metric = %q, want %q", rejs[0].Metric, want)
	}
	if want := "te\uFFFDmp"; rejs[1].Metric != want {
		t.Errorf("metric = %q, want %q", rejs[1].Metric, want)
	}
	if rejs[2].Metric != "temp" || !strings.Contains(rejs[2].Detail, `"temp"`) {
		t.Errorf("rejection %+v does not name the metric", rejs[2])
	}
	_, rejs = Decode([]byte(`[{"metrics":{"temp":1}},{"metrics":{"temp":9999}}]`), testSchema, testNow, Limits{}, nil)
	if len(rejs) != 1 || rejs[0].Detail != `element 1: metric "temp": 9999 outside [-50, 1200]` {
		t.Errorf("got %+v", rejs)
	}
}

func TestDecodeAppends(t *testing.T) {
	prev := mkPoint(9, 9, nowTS())
	dst := make([]Point, 1, 8)
	dst[0] = prev
	got, _ := Decode([]byte(`{"metrics":{"temp":1}}`), testSchema, testNow, Limits{}, dst)
	if want := []Point{prev, mkPoint(1, 1, nowTS())}; !pointsEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	got, rejs := Decode([]byte(`[{"metrics":{"temp":1}},`), testSchema, testNow, Limits{}, dst)
	if !pointsEqual(got, []Point{prev}) || len(rejs) != 1 {
		t.Errorf("malformed payload: got %v, %v", got, rejs)
	}
}

// TestDecodeManyKeys covers metrics objects past the linear repeat check.
func TestDecodeManyKeys(t *testing.T) {
	schema := Schema{}
	var b strings.Builder
	b.WriteString(`{"metrics":{`)
	for i := range 100 {
		key := fmt.Sprintf("m%d", i)
		schema[key] = MetricSpec{ID: int32(i), Min: math.Inf(-1), Max: math.Inf(1)}
		fmt.Fprintf(&b, `"%s":%d,`, key, i)
	}
	b.WriteString(`"m3":0,"m70":0,"m\u0039\u0039":0,"m70":0}}`)
	got, rejs := Decode([]byte(b.String()), schema, testNow, Limits{}, nil)
	if len(got) != 97 || len(rejs) != 3 {
		t.Fatalf("got %d points, rejections %v", len(got), rejs)
	}
	for _, p := range got {
		if p.MetricID == 3 || p.MetricID == 70 || p.MetricID == 99 || p.Value != float64(p.MetricID) {
			t.Errorf("unexpected point %v", p)
		}
	}
}

func TestDefaultLimits(t *testing.T) {
	want := Limits{MaxPayload: 256 << 10, MaxPoints: 10_000, MaxAge: 7 * 24 * time.Hour, MaxFuture: 10 * time.Minute}
	if got := DefaultLimits(); got != want {
		t.Errorf("DefaultLimits() = %+v", got)
	}
	if got := (Limits{}).orDefaults(); got != want {
		t.Errorf("zero Limits = %+v", got)
	}
}

func BenchmarkDecode(b *testing.B) {
	single, err := os.ReadFile(filepath.Join("testdata", "payloads", "single.json"))
	if err != nil {
		b.Fatal(err)
	}
	var arr strings.Builder
	arr.WriteByte('[')
	for i := range 100 {
		if i > 0 {
			arr.WriteByte(',')
		}
		fmt.Fprintf(&arr, `{"ts":%d,"metrics":{"temp":%d.25,"p":101.325,"rpm":%d,"on":1,"hum":45.2}}`,
			testNow.UnixMilli()-int64(i)*1000, 20+i%10, 1400+i)
	}
	arr.WriteByte(']')
	payloads := []struct {
		name    string
		payload []byte
		points  int
	}{{"object5", single, 5}, {"array100x5", []byte(arr.String()), 500}}

	for _, p := range payloads {
		b.Run(p.name, func(b *testing.B) {
			dst := make([]Point, 0, p.points)
			b.SetBytes(int64(len(p.payload)))
			b.ReportAllocs()
			for b.Loop() {
				got, rejs := Decode(p.payload, testSchema, testNow, Limits{}, dst[:0])
				if len(got) != p.points || len(rejs) != 0 {
					b.Fatalf("got %d points, %v", len(got), rejs)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*p.points), "ns/point")
		})
		b.Run(p.name+"/encoding_json", func(b *testing.B) {
			type message struct {
				TS      any                `json:"ts"`
				Metrics map[string]float64 `json:"metrics"`
			}
			b.SetBytes(int64(len(p.payload)))
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if p.payload[0] == '[' {
					var m []message
					err = json.Unmarshal(p.payload, &m)
				} else {
					var m message
					err = json.Unmarshal(p.payload, &m)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*p.points), "ns/point")
		})
	}
}
