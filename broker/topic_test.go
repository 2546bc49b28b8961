package broker

import (
	"strings"
	"testing"

	"github.com/nxcloud/nxcloud/apps"
)

func TestParseTopic(t *testing.T) {
	long := strings.Repeat("a", 63)
	valid := []struct {
		in   string
		want Topic
	}{
		{"v1/acme/press-1/telemetry", Topic{"acme", "press-1", KindTelemetry, ""}},
		{"v1/acme/press-1/events", Topic{"acme", "press-1", KindEvents, ""}},
		{"v1/acme/press-1/state", Topic{"acme", "press-1", KindState, ""}},
		{"v1/acme/press-1/cmd/recipe", Topic{"acme", "press-1", KindCmd, "recipe"}},
		{"v1/acme/press-1/cmd/recipe.v2_x-1/reply", Topic{"acme", "press-1", KindCmdReply, "recipe.v2_x-1"}},
		{"v1/a1/X/telemetry", Topic{"a1", "X", KindTelemetry, ""}},
		{"v1/0-/Dev_1.a-b/state", Topic{"0-", "Dev_1.a-b", KindState, ""}},
		{"v1/" + long + "/" + long + "x/cmd/" + long + "y/reply", Topic{long, long + "x", KindCmdReply, long + "y"}},
	}
	for _, c := range valid {
		got, err := ParseTopic(c.in)
		if err != nil {
			t.Errorf("ParseTopic(%q): %v", c.in, err)
			continue
		}
		if got != c.want {
			t.Errorf("ParseTopic(%q) = %+v, want %+v", c.in, got, c.want)
		}
		if s := got.String(); s != c.in {
			t.Errorf("String() = %q, want %q", s, c.in)
		}
	}

	invalid := []string{
		"",
		"v1",
		"v1/acme/press-1",
		"v1/acme/press-1/",
		"v1/acme/press-1/telemetry/",
		"v1/acme/press-1/telemetry/x",
		"v2/acme/press-1/telemetry",
		"V1/acme/press-1/telemetry",
		"/v1/acme/press-1/telemetry",
		"v1//press-1/telemetry",
		"v1/acme//telemetry",
		"v1/a/press-1/telemetry",              // slug too short
		"v1/Acme/press-1/telemetry",           // upper-case slug
		"v1/-acme/press-1/telemetry",          // slug starts with -
		"v1/" + long + "a/d/telemetry",        // slug too long
		"v1/acme/" + long + "ab/telemetry",    // key too long
		"v1/acme/_press/telemetry",            // key starts with _
		"v1/acme/press 1/telemetry",           // space
		"v1/acme/préss/telemetry",             // unicode
		"v1/acme/press-1/Telemetry",           // kind is case-sensitive
		"v1/acme/press-1/cmd",                 // no name
		"v1/acme/press-1/cmd/",                // empty name
		"v1/acme/press-1/cmd/Recipe",          // upper-case name
		"v1/acme/press-1/cmd/recipe/ack",      // not reply
		"v1/acme/press-1/cmd/recipe/reply/x",  // extra level
		"v1/acme/press-1/cmd/recipe/reply/",   // trailing slash
		"v1/acme/press-1/telemetry/cmd/reply", // wrong shape
		"v1/+/press-1/telemetry",
		"v1/acme/#",
		"v1/acme/+/telemetry",
		"v1/acme/press-1/cmd/+",
		"v1/acme/press-1/cmd/#",
		"$SYS/broker/version",
		"$share/g/v1/acme/press-1/telemetry",
		"v1/acme/press-1/telemetry\x00",
		"v1/acme/press-1/cmd/" + strings.Repeat("a", 300),
	}
	for _, in := range invalid {
		if got, err := ParseTopic(in); err == nil {
			t.Errorf("ParseTopic(%q) = %+v, want an error", in, got)
		} else if apps.Code(err) != apps.Invalid {
			t.Errorf("ParseTopic(%q) error code = %q, want invalid", in, apps.Code(err))
		}
	}
}

func TestTopicACL(t *testing.T) {
	const slug, key = "acme", "press-1"
	pub := map[string]bool{
		"v1/acme/press-1/telemetry":        true,
		"v1/acme/press-1/events":           true,
		"v1/acme/press-1/state":            true,
		"v1/acme/press-1/cmd/recipe/reply": true,
		"v1/acme/press-1/cmd/recipe":       false, // only the platform sends commands
		"v1/acme/press-2/telemetry":        false,
		"v1/globex/press-1/telemetry":      false,
		"v1/acme/press-1/telemetry/x":      false,
		"v1/acme/+/telemetry":              false,
		"v1/acme/press-1/#":                false,
		"$SYS/broker/version":              false,
		"":                                 false,
	}
	for topic, want := range pub {
		if got := mayPublish(slug, key, topic); got != want {
			t.Errorf("mayPublish(%q) = %v, want %v", topic, got, want)
		}
	}
	sub := map[string]bool{
		"v1/acme/press-1/cmd/+":             true,
		"v1/acme/press-1/cmd/#":             true,
		"v1/acme/press-1/cmd/recipe":        true,
		"v1/acme/press-1/cmd/recipe/reply":  false,
		"v1/acme/press-1/cmd/+/reply":       false,
		"v1/acme/press-1/cmd":               false,
		"v1/acme/press-1/cmd/":              false,
		"v1/acme/press-1/cmd/Recipe":        false,
		"v1/acme/press-1/#":                 false,
		"v1/acme/press-1/telemetry":         false,
		"v1/acme/press-1/+":                 false,
		"v1/acme/press-2/cmd/#":             false,
		"v1/acme/+/cmd/#":                   false,
		"v1/globex/press-1/cmd/#":           false,
		"v1/+/press-1/cmd/#":                false,
		"+/acme/press-1/cmd/#":              false,
		"#":                                 false,
		"+":                                 false,
		"$SYS/#":                            false,
		"$share/g/v1/acme/press-1/cmd/#":    false,
		"$share/g/v1/acme/press-1/cmd/x":    false,
		"v1/acme/press-1/cmd/#/x":           false,
		"v1/acme/press-1/cmd/recipe/x/y/z":  false,
		"v1/acme/press-1/cmd/" + "a\u00e9b": false,
	}
	for filter, want := range sub {
		if got := maySubscribe(slug, key, filter); got != want {
			t.Errorf("maySubscribe(%q) = %v, want %v", filter, got, want)
		}
	}
}

func TestSplitUsername(t *testing.T) {
	cases := []struct {
		in        string
		key, slug string
		ok        bool
	}{
		{"press-1@acme", "press-1", "acme", true},
		{"P.1_x@a-1", "P.1_x", "a-1", true},
		{"press-1", "", "", false},
		{"@acme", "", "acme", false},
		{"press-1@", "press-1", "", false},
		{"press-1@acme@x", "press-1", "acme@x", false},
		{"press+1@acme", "press+1", "acme", false},
		{"press-1@ACME", "press-1", "ACME", false},
	}
	for _, c := range cases {
		key, slug, ok := splitUsername(c.in)
		if ok != c.ok || (ok && (key != c.key || slug != c.slug)) {
			t.Errorf("splitUsername(%q) = %q, %q, %v; want %q, %q, %v", c.in, key, slug, ok, c.key, c.slug, c.ok)
		}
	}
}

func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{
		"v1/acme/press-1/telemetry",
		"v1/acme/press-1/events",
		"v1/acme/press-1/state",
		"v1/acme/press-1/cmd/recipe",
		"v1/acme/press-1/cmd/recipe/reply",
		"v1/acme/+/telemetry",
		"$SYS/broker/version",
		"v1/acme/press-1/cmd/recipe/reply/x",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tp, err := ParseTopic(s)
		if err != nil {
			if tp != (Topic{}) {
				t.Fatalf("ParseTopic(%q) returned %+v with error %v", s, tp, err)
			}
			return
		}
		if len(s) > maxTopicLen || strings.ContainsAny(s, "+#$\x00") {
			t.Fatalf("ParseTopic(%q) accepted an invalid topic", s)
		}
		if got := tp.String(); got != s {
			t.Fatalf("ParseTopic(%q).String() = %q", s, got)
		}
		again, err := ParseTopic(tp.String())
		if err != nil || again != tp {
			t.Fatalf("round trip of %q: %+v, %v; want %+v", s, again, err, tp)
		}
		// The ACL helpers must agree with the parser.
		if want := tp.Kind != KindCmd; mayPublish(tp.Tenant, tp.Device, s) != want {
			t.Fatalf("mayPublish(%q) != %v", s, want)
		}
		if want := tp.Kind == KindCmd; maySubscribe(tp.Tenant, tp.Device, s) != want {
			t.Fatalf("maySubscribe(%q) != %v", s, want)
		}
	})
}
