package policy

import (
	"errors"
	"fmt"
	"strings"
)

// TagDefined reports whether tag has an entry in tagOwners. Tags applied by
// an admin (pre-auth keys, `headscale nodes tag`) must be defined there.
func (p *Policy) TagDefined(tag string) bool {
	if p == nil {
		return false
	}
	_, ok := p.tagOwners[tag]
	return ok
}

// InFile returns err with every problem prefixed by the file name the way
// compilers do (name:line:column: path: reason), one per line, so a
// rejected policy names file, line and reason.
func InFile(name string, err error) error {
	if err == nil {
		return nil
	}
	list, ok := positioned(err)
	if !ok {
		return fmt.Errorf("%s: %w", name, err)
	}
	lines := make([]string, 0, len(list))
	for _, e := range list {
		if e.Line > 0 {
			lines = append(lines, name+":"+e.Error())
		} else {
			lines = append(lines, name+": "+e.Error())
		}
	}
	return &fileError{msg: strings.Join(lines, "\n"), err: err}
}

// positioned returns the positioned errors err carries (an ErrorList, or
// one *Error as a list of one), and false when it carries neither.
func positioned(err error) (ErrorList, bool) {
	var list ErrorList
	if errors.As(err, &list) {
		return list, true
	}
	var one *Error
	if errors.As(err, &one) {
		return ErrorList{one}, true
	}
	return nil, false
}

// fileError keeps the original error for errors.Is/As.
type fileError struct {
	msg string
	err error
}

func (e *fileError) Error() string { return e.msg }
func (e *fileError) Unwrap() error { return e.err }
