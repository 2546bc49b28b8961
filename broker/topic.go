package broker

import (
	"strings"

	"github.com/nxcloud/nxcloud/apps"
)

// Topic kinds (DESIGN §4). Devices publish telemetry, events, state and
// cmd_reply; the platform publishes cmd.
const (
	KindTelemetry = "telemetry"
	KindEvents    = "events"
	KindState     = "state"
	KindCmd       = "cmd"
	KindCmdReply  = "cmd_reply"
)

// maxTopicLen bounds a topic name; with the level limits below a valid topic
// is at most 3+63+64+4+64+6+5 = 209 bytes, so this only cuts parsing short.
const maxTopicLen = 256

// Topic is a parsed device topic:
//
//	v1/{tenant}/{device}/telemetry|events|state
//	v1/{tenant}/{device}/cmd/{name}          (platform → device)
//	v1/{tenant}/{device}/cmd/{name}/reply    (device → platform)
type Topic struct {
	Tenant string // tenant slug
	Device string // device key
	Kind   string // one of the Kind constants
	Name   string // command name, for cmd and cmd_reply only
}

// ParseTopic parses an MQTT topic name into a Topic. Anything that is not
// exactly one of the shapes above is an invalid error: wildcards, empty or
// extra levels, $-topics, non-ASCII, names over 256 bytes, and tenant slugs,
// device keys or command names outside their alphabets.
func ParseTopic(s string) (Topic, error) {
	if len(s) > maxTopicLen {
		return Topic{}, topicError("topic is longer than %d bytes", maxTopicLen)
	}
	// At most 7 pieces, so "v1/t/d/cmd/x/reply/extra" is caught as too many.
	parts := strings.SplitN(s, "/", 7)
	if len(parts) < 4 || len(parts) > 6 {
		return Topic{}, topicError("topic must have 4 to 6 levels")
	}
	if parts[0] != "v1" {
		return Topic{}, topicError("topic must start with v1/")
	}
	t := Topic{Tenant: parts[1], Device: parts[2]}
	if !ValidTenantSlug(t.Tenant) {
		return Topic{}, topicError("invalid tenant slug in topic")
	}
	if !ValidDeviceKey(t.Device) {
		return Topic{}, topicError("invalid device key in topic")
	}
	switch len(parts) {
	case 4:
		switch parts[3] {
		case KindTelemetry, KindEvents, KindState:
			t.Kind = parts[3]
		default:
			return Topic{}, topicError("unknown topic kind")
		}
	case 5, 6:
		if parts[3] != "cmd" || !ValidCmdName(parts[4]) {
			return Topic{}, topicError("invalid command topic")
		}
		t.Kind, t.Name = KindCmd, parts[4]
		if len(parts) == 6 {
			if parts[5] != "reply" {
				return Topic{}, topicError("invalid command reply topic")
			}
			t.Kind = KindCmdReply
		}
	}
	return t, nil
}

// String formats t as a topic name; ParseTopic(t.String()) returns t for any
// t that ParseTopic produced.
func (t Topic) String() string {
	base := "v1/" + t.Tenant + "/" + t.Device + "/"
	switch t.Kind {
	case KindCmd:
		return base + "cmd/" + t.Name
	case KindCmdReply:
		return base + "cmd/" + t.Name + "/reply"
	default:
		return base + t.Kind
	}
}

// CmdTopic returns the downlink topic of command name for a device.
func CmdTopic(tenantSlug, deviceKey, name string) string {
	return Topic{Tenant: tenantSlug, Device: deviceKey, Kind: KindCmd, Name: name}.String()
}

func topicError(format string, args ...any) *apps.Error {
	e := apps.Errorf(apps.Invalid, format, args...)
	e.Field = "topic"
	return e
}

// ValidTenantSlug reports whether s matches ^[a-z0-9][a-z0-9-]{1,62}$.
func ValidTenantSlug(s string) bool {
	if len(s) < 2 || len(s) > 63 || !isLowerAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !isLowerAlnum(s[i]) && s[i] != '-' {
			return false
		}
	}
	return true
}

// ValidDeviceKey reports whether s matches ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$.
func ValidDeviceKey(s string) bool {
	if len(s) < 1 || len(s) > 64 || !isAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !isAlnum(s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-' {
			return false
		}
	}
	return true
}

// ValidCmdName reports whether s matches ^[a-z0-9][a-z0-9_.-]{0,63}$.
func ValidCmdName(s string) bool {
	if len(s) < 1 || len(s) > 64 || !isLowerAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !isLowerAlnum(s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-' {
			return false
		}
	}
	return true
}

func isLowerAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

func isAlnum(c byte) bool { return isLowerAlnum(c) || c >= 'A' && c <= 'Z' }

// splitUsername splits an MQTT username "<device-key>@<tenant-slug>" and
// checks both halves, so garbage never reaches the credential store.
func splitUsername(u string) (deviceKey, tenantSlug string, ok bool) {
	i := strings.IndexByte(u, '@')
	if i < 0 {
		return "", "", false
	}
	deviceKey, tenantSlug = u[:i], u[i+1:]
	return deviceKey, tenantSlug, ValidDeviceKey(deviceKey) && ValidTenantSlug(tenantSlug)
}

// mayPublish reports whether the device (tenantSlug, deviceKey) may publish
// to topic: only telemetry, events, state and command replies under its own
// prefix. ParseTopic already refuses wildcards and $-topics.
func mayPublish(tenantSlug, deviceKey, topic string) bool {
	t, err := ParseTopic(topic)
	if err != nil || t.Tenant != tenantSlug || t.Device != deviceKey {
		return false
	}
	return t.Kind != KindCmd
}

// maySubscribe reports whether the device may subscribe to filter, or be
// delivered a message on the topic name filter: only v1/{t}/{d}/cmd/+,
// v1/{t}/{d}/cmd/# and v1/{t}/{d}/cmd/{name}. Own telemetry, other devices,
// $SYS, $share and every broader wildcard are refused. The caller guarantees
// tenantSlug and deviceKey are valid (no wildcard characters).
func maySubscribe(tenantSlug, deviceKey, filter string) bool {
	prefix := "v1/" + tenantSlug + "/" + deviceKey + "/cmd/"
	rest, ok := strings.CutPrefix(filter, prefix)
	if !ok {
		return false
	}
	return rest == "+" || rest == "#" || ValidCmdName(rest)
}
