package quality

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// MaxImportBytes is the largest import body.
const MaxImportBytes = 2 << 20

// Import row statuses.
const (
	RowStored = "stored"
	RowValid  = "valid" // a dry run would store it
	RowFailed = "failed"
)

// ImportRowInput is one row of a results import: a value of a lot (by id or
// code).
type ImportRowInput struct {
	Lot            string     `json:"lot"`
	Characteristic string     `json:"characteristic"`
	Value          *float64   `json:"value"`
	Subgroup       int        `json:"subgroup"`
	MeasuredAt     *time.Time `json:"measured_at"`
	Device         string     `json:"device"`
}

// ImportRow is a parsed row: its number (CSV line, header = 1; or 1-based
// array position), its input, or why it could not be read.
type ImportRow struct {
	Row   int
	Input ImportRowInput
	Err   *apps.Error
}

// ImportResult is the outcome of a results import.
type ImportResult struct {
	DryRun bool            `json:"dry_run"`
	Stored int             `json:"stored"`
	Failed int             `json:"failed"`
	Rows   []ImportOutcome `json:"rows"`
}

// ImportOutcome is what became of one row.
type ImportOutcome struct {
	Row            int               `json:"row"`
	Lot            string            `json:"lot"`
	Characteristic string            `json:"characteristic"`
	Status         string            `json:"status"`
	Error          *tenants.RowError `json:"error,omitempty"`
	ResultID       int64             `json:"result_id,omitempty"`
}

var importColumns = []string{"lot", "characteristic", "value", "subgroup", "measured_at", "device"}

const importHeaderHint = "want the header lot,characteristic,value[,subgroup,measured_at,device] (comma-separated, lower-case, in any order)"

// ParseResultsCSV reads a results CSV (UTF-8, optional BOM). Errors: invalid
// (empty, bad or incomplete header, CSV syntax, no rows, too many rows); a
// row's bad field is the row's error.
func ParseResultsCSV(body []byte) ([]ImportRow, error) {
	r := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(body, []byte("\ufeff"))))
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if errors.Is(err, io.EOF) {
		return nil, apps.Errorf(apps.Invalid, "the CSV is empty: %s", importHeaderHint)
	}
	if err != nil {
		return nil, apps.Errorf(apps.Invalid, "CSV syntax: %v", err)
	}
	col := map[string]int{}
	for i, name := range header {
		name = strings.TrimSpace(name)
		if !slices.Contains(importColumns, name) {
			return nil, apps.Errorf(apps.Invalid, "unknown column %q in the CSV header: %s", clip(name, 64), importHeaderHint)
		}
		if _, dup := col[name]; dup {
			return nil, apps.Errorf(apps.Invalid, "column %q appears twice in the CSV header", name)
		}
		col[name] = i
	}
	for _, name := range importColumns[:3] {
		if _, ok := col[name]; !ok {
			return nil, apps.Errorf(apps.Invalid, "the CSV header lacks column %q: %s", name, importHeaderHint)
		}
	}
	var rows []ImportRow
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, apps.Errorf(apps.Invalid, "CSV syntax: %v", err)
		}
		if len(rows) >= MaxResults {
			return nil, apps.Errorf(apps.Invalid, "at most %d rows per import", MaxResults)
		}
		line, _ := r.FieldPos(0)
		row := ImportRow{Row: line}
		if len(rec) != len(header) {
			row.Err = apps.Errorf(apps.Invalid, "%d fields, the header has %d", len(rec), len(header))
			rows = append(rows, row)
			continue
		}
		get := func(name string) string {
			if i, ok := col[name]; ok {
				return strings.TrimSpace(rec[i])
			}
			return ""
		}
		row.Input = ImportRowInput{Lot: get("lot"), Characteristic: get("characteristic"), Device: get("device")}
		row.Err = parseCSVFields(&row.Input, get("value"), get("subgroup"), get("measured_at"))
		rows = append(rows, row)
	}
	if len(rows) == 0 {
		return nil, apps.Errorf(apps.Invalid, "the import has no rows")
	}
	return rows, nil
}

func parseCSVFields(in *ImportRowInput, value, subgroup, measuredAt string) *apps.Error {
	if value == "" {
		return apps.FieldError("value", "a value is required")
	}
	v, err := strconv.ParseFloat(value, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return apps.FieldError("value", "want a finite number, not %q", clip(value, 40))
	}
	in.Value = &v
	if subgroup != "" {
		n, err := strconv.Atoi(subgroup)
		if err != nil || n < 1 {
			return apps.FieldError("subgroup", "want a positive integer, not %q", clip(subgroup, 40))
		}
		in.Subgroup = n
	}
	if measuredAt != "" {
		t, err := time.Parse(time.RFC3339Nano, measuredAt)
		if err != nil {
			return apps.FieldError("measured_at", "want an RFC 3339 time, not %q", clip(measuredAt, 40))
		}
		in.MeasuredAt = &t
	}
	return nil
}

// ParseResultsJSON reads a JSON array of ImportRowInput, each element decoded
// strictly (apps.Bind); an element that does not decode is that row's error.
// Errors: invalid (not an array, no rows, too many rows).
func ParseResultsJSON(body []byte) ([]ImportRow, error) {
	var elems []json.RawMessage
	if err := json.Unmarshal(body, &elems); err != nil {
		return nil, apps.Errorf(apps.Invalid, "want a JSON array of rows: %v", err)
	}
	if len(elems) == 0 {
		return nil, apps.Errorf(apps.Invalid, "the import has no rows")
	}
	if len(elems) > MaxResults {
		return nil, apps.Errorf(apps.Invalid, "at most %d rows per import", MaxResults)
	}
	rows := make([]ImportRow, len(elems))
	for i, e := range elems {
		rows[i].Row = i + 1
		if err := apps.Bind(bytes.NewReader(e), &rows[i].Input); err != nil {
			rows[i].Err = appError(err)
		}
	}
	return rows, nil
}

func appError(err error) *apps.Error {
	var e *apps.Error
	if errors.As(err, &e) {
		return e
	}
	return apps.Errorf(apps.Invalid, "%v", err)
}

// ImportResults validates rows and stores the valid ones, in one transaction:
// every valid row is stored (numbered per lot and characteristic in row
// order), then each lot touched is judged once, its nonconformances raised
// and OnResults called; with dryRun nothing is written and valid rows are
// reported "valid". A row fails on an unknown lot (not_found), an unknown
// characteristic or device or a bad value (invalid). Errors: invalid (no rows
// or too many); row errors are in the result.
func (s *Service) ImportResults(ctx context.Context, rows []ImportRow, dryRun bool) (ImportResult, error) {
	if len(rows) == 0 {
		return ImportResult{}, apps.Errorf(apps.Invalid, "the import has no rows")
	}
	if len(rows) > MaxResults {
		return ImportResult{}, apps.Errorf(apps.Invalid, "at most %d rows per import", MaxResults)
	}
	res := ImportResult{DryRun: dryRun, Rows: make([]ImportOutcome, len(rows))}
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		chars, err := characteristicSet(ctx, tx)
		if err != nil {
			return err
		}
		lots := map[string]*Lot{}
		byLot := map[uuid.UUID][]int{}
		pending := make([]pendingResult, len(rows))
		for i, r := range rows {
			res.Rows[i] = ImportOutcome{Row: r.Row, Lot: r.Input.Lot, Characteristic: r.Input.Characteristic}
			fail := func(e *apps.Error) {
				res.Rows[i].Status, res.Rows[i].Error = RowFailed, &tenants.RowError{Code: e.Code, Field: e.Field, Message: e.Message}
				res.Failed++
			}
			if r.Err != nil {
				fail(r.Err)
				continue
			}
			l, seen := lots[r.Input.Lot]
			if !seen {
				if r.Input.Lot == "" {
					fail(apps.FieldError("lot", "a lot id or code is required"))
					continue
				}
				found, err := lotByRef(ctx, tx, r.Input.Lot, false)
				if err != nil && apps.Code(err) != apps.NotFound {
					return err
				}
				if err == nil {
					l = &found
				}
				lots[r.Input.Lot] = l
			}
			if l == nil {
				fail(&apps.Error{Code: apps.NotFound, Field: "lot", Message: fmt.Sprintf("unknown lot %q", clip(r.Input.Lot, 64))})
				continue
			}
			p, err := s.checkResult(ctx, tx, chars, ResultInput{Characteristic: r.Input.Characteristic, Value: r.Input.Value,
				Subgroup: r.Input.Subgroup, MeasuredAt: r.Input.MeasuredAt, Device: r.Input.Device}, "")
			if err != nil {
				if apps.Code(err) == apps.Internal {
					return err
				}
				fail(appError(err))
				continue
			}
			pending[i] = p
			byLot[l.ID] = append(byLot[l.ID], i)
			res.Rows[i].Status = RowValid
		}
		if dryRun || len(byLot) == 0 {
			return nil
		}
		// Lock the lots in id order, so concurrent imports cannot deadlock.
		ids := make([]uuid.UUID, 0, len(byLot))
		for id := range byLot {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(a, b int) bool { return bytes.Compare(ids[a][:], ids[b][:]) < 0 })
		touched := make([]Lot, 0, len(ids))
		for _, id := range ids {
			l, err := lotByRef(ctx, tx, id.String(), true)
			if err != nil {
				return err
			}
			idx := byLot[id]
			batch := make([]pendingResult, len(idx))
			for k, i := range idx {
				batch[k] = pending[i]
			}
			stored, err := s.store(ctx, tx, l, batch, SourceCSV, nil)
			if err != nil {
				return err
			}
			if len(stored) != len(idx) {
				return fmt.Errorf("import: stored %d of %d values of lot %s", len(stored), len(idx), l.Code)
			}
			// store numbers values in input order per characteristic: match
			// each row to its stored value by characteristic and sample.
			bySample := map[string][]Result{}
			for _, x := range stored {
				bySample[x.Characteristic] = append(bySample[x.Characteristic], x)
			}
			for k := range bySample {
				sort.Slice(bySample[k], func(a, b int) bool { return bySample[k][a].Sample < bySample[k][b].Sample })
			}
			for _, i := range idx {
				key := pending[i].key
				res.Rows[i].ResultID, bySample[key] = bySample[key][0].ID, bySample[key][1:]
				res.Rows[i].Status = RowStored
				res.Stored++
			}
			touched = append(touched, l)
		}
		return s.afterResults(ctx, tx, touched)
	})
	if err != nil {
		return ImportResult{}, err
	}
	return res, nil
}
