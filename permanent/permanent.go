// Package permanent marks errors that retrying cannot fix.
//
// Bad input (invalid JSON, a failed validation, an unknown task type, a
// template error, an HTTP 4xx answer) fails the same way every time, so the
// retry middleware skips it and the message goes straight to the poison topic.
package permanent

import "errors"

// Error wraps an error that must not be retried.
type Error struct {
	Err error
}

func (e *Error) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *Error) Unwrap() error { return e.Err }

// Wrap marks err as permanent. It returns nil for a nil err.
func Wrap(err error) error {
	if err == nil {
		return nil
	}
	var p *Error
	if errors.As(err, &p) {
		return err
	}
	return &Error{Err: err}
}

// Is reports whether err, or any error it wraps, is marked permanent.
func Is(err error) bool {
	var p *Error
	return errors.As(err, &p)
}
