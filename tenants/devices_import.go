package tenants

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
)

// Limits of one device import.
const (
	MaxImportRows  = 10000
	MaxImportBytes = 2 << 20
)

// Import row statuses.
const (
	RowCreated = "created"
	RowFailed  = "failed"
	RowValid   = "valid" // a dry run would create it
)

// ImportRow is one row of a device import: its input, or why it could not be
// read.
type ImportRow struct {
	// Row is the row's number: in a CSV file its line (the header is line 1),
	// in a JSON array its 1-based position.
	Row   int
	Input DeviceInput
	// Err is set when the row itself could not be read (wrong field count,
	// unknown or wrongly-cased JSON field, wrong type).
	Err *apps.Error
}

// ImportResult is the outcome of a device import.
type ImportResult struct {
	DryRun  bool            `json:"dry_run"`
	Created int             `json:"created"`
	Failed  int             `json:"failed"`
	Rows    []ImportOutcome `json:"rows"`
}

// ImportOutcome is what became of one row. Secret is the device's MQTT
// password, shown this once.
type ImportOutcome struct {
	Row      int       `json:"row"`
	Key      string    `json:"key"`
	Status   string    `json:"status"`
	Error    *RowError `json:"error,omitempty"`
	Device   *Device   `json:"device,omitempty"`
	Username string    `json:"mqtt_username,omitempty"`
	Secret   string    `json:"secret,omitempty"`
}

// RowError says why a row was refused, with the stable codes of apps.Error.
type RowError struct {
	Code    string `json:"code"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

// normalize checks what can be checked of a device without the database and
// fills the name's default. Errors: invalid (with the field).
func (in *DeviceInput) normalize() error {
	if !keyPattern.MatchString(in.Key) {
		return apps.FieldError("key", "want 1-64 letters, digits, '_', '.' or '-'")
	}
	if in.Name == "" {
		in.Name = in.Key
	}
	if utf8.RuneCountInString(in.Name) > 200 {
		return apps.FieldError("name", "at most 200 characters")
	}
	if in.Model == "" {
		return apps.FieldError("model", "a device model is required")
	}
	if in.Secret != "" {
		return validSecret(in.Secret)
	}
	return nil
}

func appError(err error) *apps.Error {
	var e *apps.Error
	if errors.As(err, &e) {
		return e
	}
	return apps.Errorf(apps.Invalid, "%v", err)
}

// ImportDevices validates rows and creates the valid ones in tenant, in one
// transaction: every valid row is created, or none when the database fails.
// A row fails on a bad field, an unknown model or line (invalid), a key that
// appears on several rows or already exists in the tenant (conflict). With
// dryRun nothing is written and valid rows are reported "valid". Errors:
// invalid (no rows, too many rows); row errors are in the result.
func (s *Service) ImportDevices(ctx context.Context, tenant uuid.UUID, rows []ImportRow, dryRun bool) (ImportResult, error) {
	if len(rows) == 0 {
		return ImportResult{}, apps.Errorf(apps.Invalid, "the import has no device rows")
	}
	if len(rows) > MaxImportRows {
		return ImportResult{}, apps.Errorf(apps.Invalid, "at most %d devices per import", MaxImportRows)
	}
	in, bad := checkImportRows(rows)

	var res ImportResult
	ctx = WithTenant(ctx, tenant)
	err := InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		var err error
		res, err = importTx(ctx, tx, tenant, rows, in, bad, dryRun)
		return err
	})
	if err != nil {
		return ImportResult{}, fmt.Errorf("import devices: %w", err)
	}
	return res, nil
}

// checkImportRows checks what can be checked of the rows without the
// database: each row's fields (normalized into in) and keys repeated within
// the import. bad[i] is row i's error, nil when it passed.
func checkImportRows(rows []ImportRow) (in []DeviceInput, bad []*apps.Error) {
	in = make([]DeviceInput, len(rows))
	bad = make([]*apps.Error, len(rows))
	byKey := map[string][]int{}
	for i, r := range rows {
		in[i] = r.Input
		if r.Err != nil {
			bad[i] = r.Err
		} else if err := in[i].normalize(); err != nil {
			bad[i] = appError(err)
		}
		if keyPattern.MatchString(r.Input.Key) {
			byKey[r.Input.Key] = append(byKey[r.Input.Key], i)
		}
	}
	for key, at := range byKey {
		if len(at) < 2 {
			continue
		}
		nums := make([]string, len(at))
		for j, i := range at {
			nums[j] = strconv.Itoa(rows[i].Row)
		}
		for _, i := range at {
			if bad[i] == nil {
				bad[i] = &apps.Error{Code: apps.Conflict, Field: "key",
					Message: fmt.Sprintf("key %q appears on rows %s of this import", key, strings.Join(nums, ", "))}
			}
		}
	}
	return in, bad
}

// importTx resolves models and lines, finds keys the tenant already has and
// inserts the remaining rows with one statement. Every query names the
// tenant (nx_tenant()), so tx may also be a system transaction that RLS does
// not scope (the onboarding one).
func importTx(ctx context.Context, tx pgx.Tx, tenant uuid.UUID, rows []ImportRow, in []DeviceInput, bad []*apps.Error, dryRun bool) (ImportResult, error) {
	var slug string
	if err := tx.QueryRow(ctx, `SELECT slug FROM tenants WHERE id = nx_tenant()`).Scan(&slug); err != nil {
		return ImportResult{}, StoreError(err, "enterprise")
	}
	models, err := keyIDs(ctx, tx, `SELECT key, id FROM device_models WHERE tenant_id = nx_tenant()`)
	if err != nil {
		return ImportResult{}, err
	}
	lines, err := keyIDs(ctx, tx, `SELECT key, id FROM lines WHERE tenant_id = nx_tenant()`)
	if err != nil {
		return ImportResult{}, err
	}
	var keys []string
	for i := range in {
		if bad[i] != nil {
			continue
		}
		if _, ok := models[in[i].Model]; !ok {
			bad[i] = apps.FieldError("model", "unknown device model %q", clip(in[i].Model, 64))
		} else if _, ok := lines[in[i].Line]; in[i].Line != "" && !ok {
			bad[i] = apps.FieldError("line", "unknown line %q", clip(in[i].Line, 64))
		} else {
			keys = append(keys, in[i].Key)
		}
	}
	existing, err := keyIDs(ctx, tx, `SELECT key, id FROM devices WHERE tenant_id = nx_tenant() AND key = ANY($1)`, keys)
	if err != nil {
		return ImportResult{}, err
	}
	for i := range in {
		if _, ok := existing[in[i].Key]; ok && bad[i] == nil {
			bad[i] = &apps.Error{Code: apps.Conflict, Field: "key", Message: fmt.Sprintf("device %q already exists", in[i].Key)}
		}
	}

	res := ImportResult{DryRun: dryRun, Rows: make([]ImportOutcome, len(rows))}
	var (
		names, dkeys []string
		modelIDs     []uuid.UUID
		lineIDs      []*uuid.UUID
		salts, hashs [][]byte
		at           []int // row index of each insert
	)
	for i := range rows {
		o := &res.Rows[i]
		o.Row, o.Key = rows[i].Row, rows[i].Input.Key
		if e := bad[i]; e != nil {
			o.Status, o.Error = RowFailed, &RowError{Code: e.Code, Field: e.Field, Message: e.Message}
			continue
		}
		o.Username = MQTTUsername(in[i].Key, slug)
		if dryRun {
			o.Status = RowValid
			continue
		}
		o.Secret = in[i].Secret
		if o.Secret == "" {
			o.Secret = NewSecret()
		}
		salt := newSalt()
		var line *uuid.UUID
		if id, ok := lines[in[i].Line]; ok {
			line = &id
		}
		dkeys, names = append(dkeys, in[i].Key), append(names, in[i].Name)
		modelIDs, lineIDs = append(modelIDs, models[in[i].Model]), append(lineIDs, line)
		salts, hashs = append(salts, salt), append(hashs, hashSecret(salt, o.Secret))
		at = append(at, i)
	}
	if len(at) > 0 {
		// ON CONFLICT: a key created since the check above fails its row, not
		// the import.
		dbRows, err := tx.Query(ctx, `
			INSERT INTO devices (tenant_id, key, name, device_model_id, line_id, secret_salt, secret_hash)
			SELECT nx_tenant(), u.key, u.name, u.model, u.line, u.salt, u.hash
			FROM unnest($1::text[], $2::text[], $3::uuid[], $4::uuid[], $5::bytea[], $6::bytea[])
				AS u (key, name, model, line, salt, hash)
			ON CONFLICT (tenant_id, key) DO NOTHING
			RETURNING key, id, status, created_at`,
			dkeys, names, modelIDs, lineIDs, salts, hashs)
		if err != nil {
			return ImportResult{}, err
		}
		type created struct {
			id     uuid.UUID
			status string
			at     time.Time
		}
		made := map[string]created{}
		var key string
		var c created
		_, err = pgx.ForEachRow(dbRows, []any{&key, &c.id, &c.status, &c.at}, func() error {
			made[key] = c
			return nil
		})
		if err != nil {
			return ImportResult{}, StoreError(err, "devices")
		}
		for j, i := range at {
			o := &res.Rows[i]
			c, ok := made[dkeys[j]]
			if !ok {
				o.Status, o.Username, o.Secret = RowFailed, "", ""
				o.Error = &RowError{Code: apps.Conflict, Field: "key", Message: fmt.Sprintf("device %q already exists", dkeys[j])}
				continue
			}
			o.Status = RowCreated
			o.Device = &Device{ID: c.id, TenantID: tenant, Key: dkeys[j], Name: names[j], ModelID: modelIDs[j],
				ModelKey: in[i].Model, LineID: lineIDs[j], LineKey: in[i].Line, Status: c.status, CreatedAt: c.at}
		}
	}
	for _, o := range res.Rows {
		switch o.Status {
		case RowCreated:
			res.Created++
		case RowFailed:
			res.Failed++
		}
	}
	return res, nil
}

// keyIDs runs a query of (key, id) pairs.
func keyIDs(ctx context.Context, q Querier, sql string, args ...any) (map[string]uuid.UUID, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	out := map[string]uuid.UUID{}
	var key string
	var id uuid.UUID
	_, err = pgx.ForEachRow(rows, []any{&key, &id}, func() error {
		out[key] = id
		return nil
	})
	return out, err
}

// csvColumns are the columns of a device CSV; the first four are required.
var csvColumns = []string{"key", "name", "model", "line", "secret"}

const csvHeaderHint = "want the header key,name,model,line[,secret] (comma-separated, lower-case, in any order)"

// ParseDeviceCSV reads a device CSV: UTF-8 (a leading byte-order mark is
// ignored), a header row naming the columns, then one device per row; rows
// whose fields are all empty are skipped. A row with the wrong number of
// fields is returned with its error. Errors: invalid (encoding, header, CSV
// syntax, more than MaxImportRows rows).
func ParseDeviceCSV(body []byte) ([]ImportRow, error) {
	if !utf8.Valid(body) {
		return nil, apps.Errorf(apps.Invalid, "the CSV is not UTF-8 text")
	}
	if bytes.IndexByte(body, 0) >= 0 {
		return nil, apps.Errorf(apps.Invalid, "the CSV contains a NUL byte")
	}
	r := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(body, []byte("\ufeff"))))
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if errors.Is(err, io.EOF) {
		return nil, apps.Errorf(apps.Invalid, "the CSV is empty: %s", csvHeaderHint)
	}
	if err != nil {
		return nil, csvSyntax(err)
	}
	col := map[string]int{}
	for i, name := range header {
		if !slices.Contains(csvColumns, name) {
			return nil, apps.Errorf(apps.Invalid, "unknown column %q in the CSV header: %s", clip(name, 64), csvHeaderHint)
		}
		if _, dup := col[name]; dup {
			return nil, apps.Errorf(apps.Invalid, "column %q appears twice in the CSV header", name)
		}
		col[name] = i
	}
	for _, name := range csvColumns[:4] {
		if _, ok := col[name]; !ok {
			return nil, apps.Errorf(apps.Invalid, "the CSV header lacks column %q: %s", name, csvHeaderHint)
		}
	}
	var rows []ImportRow
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, csvSyntax(err)
		}
		if !slices.ContainsFunc(rec, func(f string) bool { return f != "" }) {
			continue
		}
		if len(rows) == MaxImportRows {
			return nil, apps.Errorf(apps.Invalid, "at most %d devices per import", MaxImportRows)
		}
		line, _ := r.FieldPos(0)
		get := func(name string) string {
			if i, ok := col[name]; ok && i < len(rec) {
				return rec[i]
			}
			return ""
		}
		row := ImportRow{Row: line, Input: DeviceInput{Key: get("key"), Name: get("name"), Model: get("model"),
			Line: get("line"), Secret: get("secret")}}
		if len(rec) != len(header) {
			row.Err = apps.Errorf(apps.Invalid, "%d fields, but the header has %d", len(rec), len(header))
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func csvSyntax(err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return apps.Errorf(apps.Invalid, "CSV syntax error on line %d, column %d: %v", pe.Line, pe.Column, pe.Err)
	}
	return apps.Errorf(apps.Invalid, "could not read the CSV: %v", err)
}

// ParseDeviceJSON reads a JSON array of devices (DeviceInput objects). Each
// element is decoded as strictly as a single device (apps.Bind): an element
// with an unknown or wrongly-cased field, a duplicate field or a wrong type is
// returned with its error. Errors: invalid (not UTF-8, not a JSON array,
// malformed JSON, more than MaxImportRows elements).
func ParseDeviceJSON(body []byte) ([]ImportRow, error) {
	if !utf8.Valid(body) {
		return nil, apps.Errorf(apps.Invalid, "the request body is not UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return nil, apps.Errorf(apps.Invalid, "the request body must be a JSON array of devices")
	}
	var rows []ImportRow
	for dec.More() {
		if len(rows) == MaxImportRows {
			return nil, apps.Errorf(apps.Invalid, "at most %d devices per import", MaxImportRows)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, apps.Errorf(apps.Invalid, "malformed JSON in element %d: %v", len(rows)+1, err)
		}
		row := ImportRow{Row: len(rows) + 1}
		if raw[0] != '{' {
			row.Err = apps.Errorf(apps.Invalid, "a device must be a JSON object")
		} else if err := apps.Bind(bytes.NewReader(raw), &row.Input); err != nil {
			row.Err = appError(err)
			row.Input = DeviceInput{Key: jsonKey(raw)}
		}
		rows = append(rows, row)
	}
	if _, err := dec.Token(); err != nil {
		return nil, apps.Errorf(apps.Invalid, "malformed JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, apps.Errorf(apps.Invalid, "unexpected data after the JSON array")
	}
	return rows, nil
}

// jsonKey is the "key" of a refused JSON element, when it has one, so the
// caller can tell which device a row error is about.
func jsonKey(raw json.RawMessage) string {
	var m map[string]json.RawMessage
	var key string
	if json.Unmarshal(raw, &m) != nil || json.Unmarshal(m["key"], &key) != nil || !keyPattern.MatchString(key) {
		return ""
	}
	return key
}
