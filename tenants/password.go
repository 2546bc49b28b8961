package tenants

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"

	"github.com/nxcloud/nxcloud/apps"
)

// Passwords are chosen by people, so unlike generated secrets (secret.go) they
// are stored with a memory-hard hash: argon2id with OWASP's minimum cost.
const (
	argonMemory  = 19 * 1024 // KiB
	argonTime    = 2
	argonThreads = 1
	argonSaltLen = 16
	argonKeyLen  = 32

	minPassword = 12
	maxPassword = 256
)

// dummyPasswordHash is verified against when the email is unknown, so an
// unknown account costs the same argon2 work as a wrong password and timing
// does not tell them apart. Nobody knows its password.
const dummyPasswordHash = "$argon2id$v=19$m=19456,t=2,p=1$jwZmMT2KujnDmlxbT7gCOw$qZS+SraWT/dK9dgY3cg0ivdEYSjS7SdDqXYfRgncgDw"

// hashPassword returns the PHC string of an argon2id hash of pw with a fresh
// salt.
func hashPassword(pw string) string {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	key := argon2.IDKey([]byte(pw), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
}

// verifyPassword reports whether pw matches the PHC string encoded, comparing
// in constant time. It reads the cost from the string, so hashes made with
// other parameters keep verifying; a malformed string matches nothing (after
// the same work as a real check, against the dummy hash).
func verifyPassword(encoded, pw string) bool {
	p, ok := parsePHC(encoded)
	if !ok {
		p, _ = parsePHC(dummyPasswordHash)
		argon2.IDKey([]byte(pw), p.salt, p.time, p.memory, p.threads, uint32(len(p.key)))
		return false
	}
	key := argon2.IDKey([]byte(pw), p.salt, p.time, p.memory, p.threads, uint32(len(p.key)))
	return subtle.ConstantTimeCompare(key, p.key) == 1
}

type phc struct {
	memory, time uint32
	threads      uint8
	salt, key    []byte
}

// parsePHC parses "$argon2id$v=19$m=M,t=T,p=P$salt$key" within sane bounds
// (the bounds keep a tampered row from costing gigabytes).
func parsePHC(s string) (phc, bool) {
	var p phc
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" || parts[2] != fmt.Sprintf("v=%d", argon2.Version) {
		return p, false
	}
	var threads uint32
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.memory, &p.time, &threads); err != nil {
		return p, false
	}
	if p.memory < 8 || p.memory > 1<<20 || p.time < 1 || p.time > 16 || threads < 1 || threads > 16 {
		return p, false
	}
	p.threads = uint8(threads)
	var err error
	if p.salt, err = base64.RawStdEncoding.DecodeString(parts[4]); err != nil || len(p.salt) < 8 {
		return p, false
	}
	if p.key, err = base64.RawStdEncoding.DecodeString(parts[5]); err != nil || len(p.key) < 16 || len(p.key) > 64 {
		return p, false
	}
	return p, true
}

// validPassword enforces the password policy: 12 to 256 characters.
func validPassword(pw string) error {
	if n := utf8.RuneCountInString(pw); n < minPassword || n > maxPassword || !utf8.ValidString(pw) {
		return apps.FieldError("password", "a password needs %d to %d characters", minPassword, maxPassword)
	}
	return nil
}

// Tokens handed to people (sessions, invitations): a tag and 32 random bytes,
// base64url. Only their SHA-256 is stored: they carry 256 bits, so there is
// nothing to brute-force and a fast hash keeps every request cheap.
const (
	sessionTag    = "nxs_"
	invitationTag = "nxi_"
	tokenLen      = 43 // base64url of 32 bytes, unpadded
)

func newToken(tag string) (token string, hash []byte) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	token = tag + base64.RawURLEncoding.EncodeToString(b)
	return token, tokenHash(token)
}

func tokenHash(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// parseToken checks a token's shape and returns its hash.
func parseToken(tag, token string) ([]byte, bool) {
	rest, ok := strings.CutPrefix(token, tag)
	if !ok || len(rest) != tokenLen {
		return nil, false
	}
	if _, err := base64.RawURLEncoding.DecodeString(rest); err != nil {
		return nil, false
	}
	return tokenHash(token), true
}
