// Package apps holds the one application error type shared by every N app,
// X module and HTTP handler. Each app lives in its own sub-package.
package apps

import (
	"errors"
	"fmt"
)

// Error codes. They are stable: clients key on them.
const (
	Invalid       = "invalid"
	NotFound      = "not_found"
	Conflict      = "conflict"
	Unauthorized  = "unauthorized"
	Forbidden     = "forbidden"
	QuotaExceeded = "quota_exceeded"
	Unavailable   = "unavailable"
	Internal      = "internal"
)

// Error is an application error with a stable code and a message safe to show
// to the caller.
type Error struct {
	Code    string
	Message string
	// Field optionally names the input field the error is about.
	Field string
}

// Error implements error.
func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%s: %s (%s)", e.Code, e.Message, e.Field)
	}
	return e.Code + ": " + e.Message
}

// Errorf returns an *Error with the code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// FieldError returns an invalid-input *Error about one field.
func FieldError(field, format string, args ...any) *Error {
	return &Error{Code: Invalid, Field: field, Message: fmt.Sprintf(format, args...)}
}

// Code returns the code of the first *Error in err's chain, Internal for any
// other non-nil error and "" for nil.
func Code(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Internal
}
