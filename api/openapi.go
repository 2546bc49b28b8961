package api

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"sync"
)

// The OpenAPI 3 document of /api/v1, served at /api/v1/openapi.json: the
// platform's part (openapi.json) merged with one fragment per N app
// (openapi/<app>.json: tags, paths and components), so each app documents
// its routes beside the others without editing one shared file. A test checks
// the merged document against the route table both ways.
//
//go:embed openapi.json
var openapiBase []byte

//go:embed openapi/*.json
var openapiFragments embed.FS

var openapiMerged = sync.OnceValues(func() ([]byte, error) {
	return mergeOpenAPI(openapiBase, openapiFragments)
})

// OpenAPI returns the OpenAPI document (the platform's part alone if a
// fragment does not merge; New refuses to start then).
func OpenAPI() []byte {
	doc, err := openapiMerged()
	if err != nil {
		return openapiBase
	}
	return doc
}

// mergeOpenAPI adds every fragment's tags, paths and components to base. A
// path or component defined twice is an error, never a silent override.
func mergeOpenAPI(base []byte, fragments fs.FS) ([]byte, error) {
	var doc map[string]any
	if err := json.Unmarshal(base, &doc); err != nil {
		return nil, fmt.Errorf("openapi.json: %w", err)
	}
	names, err := fs.Glob(fragments, "openapi/*.json")
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	for _, name := range names {
		b, err := fs.ReadFile(fragments, name)
		if err != nil {
			return nil, err
		}
		var frag map[string]any
		dec := json.NewDecoder(bytes.NewReader(b))
		if err := dec.Decode(&frag); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		for key := range frag {
			if key != "tags" && key != "paths" && key != "components" {
				return nil, fmt.Errorf("%s: unexpected top-level key %q (a fragment holds tags, paths and components)", name, key)
			}
		}
		if tags, ok := frag["tags"].([]any); ok {
			have, _ := doc["tags"].([]any)
			doc["tags"] = append(have, tags...)
		}
		if err := mergeInto(doc, "paths", frag["paths"], path.Base(name)+": path"); err != nil {
			return nil, err
		}
		comps, _ := frag["components"].(map[string]any)
		docComps, _ := doc["components"].(map[string]any)
		if docComps == nil {
			docComps = map[string]any{}
			doc["components"] = docComps
		}
		for kind, v := range comps {
			if err := mergeInto(docComps, kind, v, path.Base(name)+": components/"+kind); err != nil {
				return nil, err
			}
		}
	}
	return json.MarshalIndent(doc, "", "  ")
}

func mergeInto(dst map[string]any, key string, src any, what string) error {
	if src == nil {
		return nil
	}
	from, ok := src.(map[string]any)
	if !ok {
		return fmt.Errorf("%s: want an object", what)
	}
	to, _ := dst[key].(map[string]any)
	if to == nil {
		to = map[string]any{}
		dst[key] = to
	}
	for k, v := range from {
		if _, dup := to[k]; dup {
			return fmt.Errorf("%s %s is defined twice", what, k)
		}
		to[k] = v
	}
	return nil
}
