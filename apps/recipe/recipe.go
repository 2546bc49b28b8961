// Package recipe is the recipe management N app: versioned recipes, approval, download to equipment and deviation alarms.
package recipe

import (
	"log/slog"

	"github.com/nxcloud/nxcloud/tenants"
)

// Downlink publishes a command to a device (the embedded broker, or an
// external MQTT cluster through a client).
type Downlink interface {
	Publish(topic string, payload []byte, retain bool, qos byte) error
}

// Service is the recipe app.
type Service struct {
	db       *tenants.DB
	log      *slog.Logger
	downlink Downlink
}

// NewService returns the recipe app on db.
func NewService(db *tenants.DB, downlink Downlink, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{db: db, log: log, downlink: downlink}
}
