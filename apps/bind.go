package apps

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"unicode/utf8"
)

// MaxBody is the largest JSON request body Bind reads.
const MaxBody = 1 << 20

// Bind decodes a JSON object from r into v (a pointer to a struct) strictly,
// closing the gaps of encoding/json that DESIGN §10 lists: field names must
// match the json tags exactly (encoding/json matches case-insensitively), a
// key may appear once (it keeps the last silently), unknown fields are refused,
// and invalid UTF-8 or \u0000 (which PostgreSQL refuses) is refused. Errors:
// invalid.
func Bind(r io.Reader, v any) error {
	body, err := io.ReadAll(io.LimitReader(r, MaxBody+1))
	if err != nil {
		return Errorf(Invalid, "could not read the request body: %v", err)
	}
	if len(body) > MaxBody {
		return Errorf(Invalid, "request body larger than %d bytes", MaxBody)
	}
	if !utf8.Valid(body) || bytes.Contains(body, []byte(`\u0000`)) {
		return Errorf(Invalid, "request body must be UTF-8 JSON without \\u0000")
	}
	allowed := jsonFields(reflect.TypeOf(v))
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return Errorf(Invalid, "request body must be a JSON object")
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return Errorf(Invalid, "malformed JSON: %v", err)
		}
		key, _ := tok.(string)
		if seen[key] {
			return FieldError(key, "field %q appears twice", key)
		}
		seen[key] = true
		if allowed != nil && !allowed[key] {
			return FieldError(key, "unknown field %q (field names are case-sensitive)", key)
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return Errorf(Invalid, "malformed JSON: %v", err)
		}
	}
	if _, err := dec.Token(); err != nil {
		return Errorf(Invalid, "malformed JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Errorf(Invalid, "unexpected data after the JSON object")
	}
	strict := json.NewDecoder(bytes.NewReader(body))
	strict.DisallowUnknownFields()
	if err := strict.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return FieldError(te.Field, "field %q must be a JSON %s", te.Field, te.Type.Kind())
		}
		return Errorf(Invalid, "malformed JSON: %v", err)
	}
	return nil
}

// jsonFields returns the top-level JSON names of a struct type (nil when v is
// not a struct, then only DisallowUnknownFields applies).
func jsonFields(t reflect.Type) map[string]bool {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	out := map[string]bool{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = true
	}
	return out
}
