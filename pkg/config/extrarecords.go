package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrEmptyRecordsFile says a dns.extra_records_path file is empty (or only
// white space): at start that means no records, as in Headscale; on a
// change it is taken as a file still being written and the records in
// force stay ("[]" removes them all).
var ErrEmptyRecordsFile = errors.New("the file is empty")

// LoadExtraRecords reads dns.extra_records_path: a JSON array of
// {"name", "type", "value"} objects, Headscale's format. The server reads
// it at start, again whenever its content changes and on every reload
// (SIGHUP), so records can change without a restart. Errors name the file
// and, for syntax errors, line and column.
func LoadExtraRecords(path string) ([]ExtraRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err // names the file; callers name the key
	}
	return ParseExtraRecords(path, b)
}

// ParseExtraRecords parses the content b of the records file at path (path
// only names it in errors). An empty b gives an error wrapping
// ErrEmptyRecordsFile.
func ParseExtraRecords(path string, b []byte) ([]ExtraRecord, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, fmt.Errorf("%s: %w", path, ErrEmptyRecordsFile)
	}
	var raw []struct {
		Name  string `json:"name"`
		Type  string `json:"type"`
		Value string `json:"value"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			line, col := lineCol(b, se.Offset)
			return nil, fmt.Errorf("%s:%d:%d: %v", path, line, col, err)
		case errors.As(err, &te):
			line, col := lineCol(b, te.Offset)
			return nil, fmt.Errorf("%s:%d:%d: expected a JSON array of {name, type, value} objects: %v", path, line, col, err)
		}
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	out := make([]ExtraRecord, 0, len(raw))
	var errs []error
	for i, r := range raw {
		rec := ExtraRecord{Name: strings.TrimSpace(r.Name), Type: recordType(r.Type, r.Value), Value: strings.TrimSpace(r.Value)}
		if err := checkRecord(rec); err != nil {
			errs = append(errs, fmt.Errorf("%s: record %d%s", path, i+1, err))
			continue
		}
		out = append(out, rec)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// lineCol converts the decoder's offset (just past the offending byte) into
// the 1-based line and column of that byte.
func lineCol(b []byte, off int64) (int, int) {
	if off > 0 {
		off--
	}
	if off > int64(len(b)) {
		off = int64(len(b))
	}
	before := b[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := int(off) - bytes.LastIndexByte(before, '\n')
	return line, col
}
