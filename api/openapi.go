package api

import _ "embed"

// openapiDoc is the OpenAPI 3 document of /api/v1, served at
// /api/v1/openapi.json; a test checks it against the route table.
//
//go:embed openapi.json
var openapiDoc []byte

// OpenAPI returns the OpenAPI document.
func OpenAPI() []byte { return openapiDoc }
