// Package downgrade is the downgrade (off-grade) management N app: downgrades, automatic proposals and their analytics.
package downgrade

import (
	"log/slog"

	"github.com/nxcloud/nxcloud/tenants"
)

// Service is the downgrade app.
type Service struct {
	db  *tenants.DB
	log *slog.Logger
}

// NewService returns the downgrade app on db.
func NewService(db *tenants.DB, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{db: db, log: log}
}
