// Package quality is the quality management N app: inspection plans, results, judgement, nonconformances and SPC.
package quality

import (
	"log/slog"

	"github.com/nxcloud/nxcloud/tenants"
)

// Service is the quality app.
type Service struct {
	db  *tenants.DB
	log *slog.Logger
}

// NewService returns the quality app on db.
func NewService(db *tenants.DB, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{db: db, log: log}
}
