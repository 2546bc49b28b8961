package recipe

import (
	"encoding/base64"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
)

// cursor is a position in a list ordered by (time DESC, id DESC).
type cursor struct {
	at *time.Time
	id uuid.UUID
}

func (c cursor) String() string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(c.at.UnixMicro(), 10) + "." + c.id.String()))
}

// parseCursor decodes next_cursor of a previous page ("" is the first page).
// Errors: invalid (field cursor).
func parseCursor(s string) (cursor, error) {
	if s == "" {
		return cursor{}, nil
	}
	bad := apps.FieldError("cursor", "malformed cursor; pass next_cursor from the previous page unchanged")
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return cursor{}, bad
	}
	us, idPart, ok := strings.Cut(string(b), ".")
	v, err1 := strconv.ParseInt(us, 10, 64)
	id, err2 := uuid.Parse(idPart)
	if !ok || err1 != nil || err2 != nil {
		return cursor{}, bad
	}
	t := time.UnixMicro(v).UTC()
	return cursor{at: &t, id: id}, nil
}
