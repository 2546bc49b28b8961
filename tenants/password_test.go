package tenants

import (
	"regexp"
	"strings"
	"testing"
)

func TestPasswordHash(t *testing.T) {
	phcRE := regexp.MustCompile(`^\$argon2id\$v=19\$m=19456,t=2,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$`)
	h1, h2 := hashPassword("correct horse battery"), hashPassword("correct horse battery")
	for _, h := range []string{h1, h2, dummyPasswordHash} {
		if !phcRE.MatchString(h) {
			t.Errorf("hash %q is not a PHC argon2id string with OWASP's minimum cost", h)
		}
	}
	if h1 == h2 {
		t.Error("two hashes of one password are equal: the salt is not random")
	}
	if !verifyPassword(h1, "correct horse battery") || !verifyPassword(h2, "correct horse battery") {
		t.Error("the right password does not verify")
	}
	for _, pw := range []string{"", "correct horse batter", "correct horse battery ", "Correct horse battery"} {
		if verifyPassword(h1, pw) {
			t.Errorf("%q verifies", pw)
		}
	}
	for _, bad := range []string{"", "plain", strings.Replace(h1, "argon2id", "argon2i", 1), strings.Replace(h1, "v=19", "v=16", 1),
		strings.Replace(h1, "m=19456", "m=99999999", 1), strings.Replace(h1, "t=2", "t=0", 1), h1[:len(h1)-20]} {
		if verifyPassword(bad, "correct horse battery") {
			t.Errorf("malformed hash %q verifies", bad)
		}
	}
}

func TestPasswordPolicy(t *testing.T) {
	for pw, ok := range map[string]bool{
		strings.Repeat("a", 11):              false,
		strings.Repeat("a", 12):              true,
		strings.Repeat("é", 12):              true, // characters, not bytes
		strings.Repeat("é", 11):              false,
		strings.Repeat("a", 256):             true,
		strings.Repeat("a", 257):             false,
		"\xff\xfe" + strings.Repeat("a", 12): false,
	} {
		if got := validPassword(pw) == nil; got != ok {
			t.Errorf("validPassword(%d bytes) = %v, want %v", len(pw), got, ok)
		}
	}
}

func TestTokens(t *testing.T) {
	tok, hash := newToken(sessionTag)
	if !regexp.MustCompile(`^nxs_[A-Za-z0-9_-]{43}$`).MatchString(tok) {
		t.Fatalf("token %q", tok)
	}
	if h, ok := parseToken(sessionTag, tok); !ok || string(h) != string(hash) {
		t.Error("a token does not parse to its hash")
	}
	for _, bad := range []string{"", sessionTag, tok[1:], tok + "A", strings.Replace(tok, "nxs_", "nxi_", 1), sessionTag + strings.Repeat("!", 43)} {
		if _, ok := parseToken(sessionTag, bad); ok {
			t.Errorf("parseToken(%q) accepted", bad)
		}
	}
}
