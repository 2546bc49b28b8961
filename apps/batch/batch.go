// Package batch is the batch (lot) tracing N app: lots, genealogy, shipments, traces and label identifiers.
package batch

import (
	"log/slog"

	"github.com/nxcloud/nxcloud/tenants"
)

// Service is the batch app.
type Service struct {
	db  *tenants.DB
	log *slog.Logger
}

// NewService returns the batch app on db.
func NewService(db *tenants.DB, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{db: db, log: log}
}
