package quality

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/ingest"
)

// FeedConsumer is the name of the device-event feed consumer of test-bench
// results.
const FeedConsumer = "quality.inspections"

// InspectionEvent is the payload of a test bench's "inspection" event on
// v1/{tenant}/{device}/events (docs/mqtt.md): the values it measured on a lot
// (by code), at the event's time unless a result says otherwise.
type InspectionEvent struct {
	Type    string          `json:"type"`
	Lot     string          `json:"lot"`
	TS      json.RawMessage `json:"ts,omitempty"`
	Results []ResultInput   `json:"results"`
}

// Feed returns the feed that stores test benches' "inspection" events as
// results (on the system pool; each event is applied in its tenant's scope).
func (s *Service) Feed(system *pgxpool.Pool) *ingest.Feed {
	return ingest.NewFeed(system, FeedConsumer, []string{"event"}, s.ApplyEvent, s.log.With("feed", FeedConsumer))
}

// ApplyEvent stores the results of one "inspection" device event, measured
// by the event's device, then judges the lot as results sent through the API
// are. Other event types are not the quality app's and are passed over.
// Errors (refusing the event for good): invalid (no results, more than
// MaxResults, unknown characteristic, missing or non-finite value, bad
// subgroup), not_found (unknown lot).
func (s *Service) ApplyEvent(ctx context.Context, tx pgx.Tx, ev ingest.DeviceEvent) error {
	var head struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(ev.Payload, &head); err != nil || head.Type != "inspection" {
		return nil
	}
	var e InspectionEvent
	if err := json.Unmarshal(ev.Payload, &e); err != nil {
		return apps.Errorf(apps.Invalid, "inspection event: %v", err)
	}
	if e.Lot == "" {
		return apps.FieldError("lot", "inspection event without a lot code")
	}
	if len(e.Results) == 0 || len(e.Results) > MaxResults {
		return apps.FieldError("results", "an inspection event carries 1-%d results", MaxResults)
	}
	l, err := lotByRef(ctx, tx, e.Lot, true)
	if err != nil {
		return err
	}
	chars, err := characteristicSet(ctx, tx)
	if err != nil {
		return err
	}
	rows := make([]pendingResult, len(e.Results))
	for i, r := range e.Results {
		if r.MeasuredAt == nil {
			at := ev.TS
			r.MeasuredAt = &at
		}
		r.Device = ""
		p, err := s.checkResult(ctx, tx, chars, r, fmt.Sprintf("results[%d].", i))
		if err != nil {
			return err
		}
		id := ev.DeviceID
		p.device = &id
		rows[i] = p
	}
	evID := ev.ID
	if _, err := s.store(ctx, tx, l, rows, SourceEvent, &evID); err != nil {
		return err
	}
	if err := s.afterResults(ctx, tx, []Lot{l}); err != nil {
		return err
	}
	s.log.Debug("inspection event stored", slog.String("lot", l.Code), slog.Int("results", len(rows)))
	return nil
}
