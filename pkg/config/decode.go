package config

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/netip"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/v2"
	yamlv3 "go.yaml.in/yaml/v3"
)

// prepare applies each active key's prepare function to its merged value.
// A value it refuses is reported and dropped, leaving the field zero.
func (l *loader) prepare() error {
	for _, s := range l.idx.all {
		if s.status != statusActive || s.prepare == nil {
			continue
		}
		v := l.k.Get(s.key)
		if v == nil {
			continue
		}
		nv, err := s.prepare(v)
		if err != nil {
			l.fail(s.key, err)
			l.k.Delete(s.key)
			continue
		}
		if old, ok := v.(string); ok {
			if now, ok := nv.(string); ok && now == old {
				continue // unchanged: spare koanf a rebuild
			}
		}
		if err := l.set(s.key, nv); err != nil {
			return err
		}
	}
	return nil
}

// tidyString returns a prepare function applying f to the text of a scalar
// value; other values are left for unmarshalling to reject.
func tidyString(f func(string) string) func(any) (any, error) {
	return func(v any) (any, error) {
		s, err := toString(v)
		if err != nil {
			return v, nil
		}
		return f(s), nil
	}
}

// sslMode is database.postgres.ssl's prepare function: YAML booleans (and
// their spellings in the environment) map to "require" and "disable",
// other text is a libpq sslmode.
func sslMode(v any) (any, error) {
	switch v := v.(type) {
	case bool:
		return sslFromBool(v), nil
	case string:
		if b, err := strconv.ParseBool(v); err == nil {
			return sslFromBool(b), nil
		}
		return strings.ToLower(strings.TrimSpace(v)), nil
	default:
		return nil, fmt.Errorf("must be true, false or a PostgreSQL sslmode, got %v", v)
	}
}

func sslFromBool(b bool) string {
	if b {
		return "require"
	}
	return "disable"
}

// unmarshal fills a Config from the merged layers with koanf's Unmarshal:
// each field is found by its koanf tag and its value converted by
// convertValue for the field's Go type. A value that does not convert is
// recorded as a problem at its origin and leaves the field zero.
func (l *loader) unmarshal() (*Config, error) {
	c := &Config{}
	err := l.k.UnmarshalWithConf("", c, koanf.UnmarshalConf{
		Tag: "koanf",
		DecoderConfig: &mapstructure.DecoderConfig{
			DecodeHook:           mapstructure.DecodeHookFuncType(convertValue),
			IgnoreUntaggedFields: true,
			// Keys are matched exactly: "Server_URL" is an unknown key,
			// not server_url.
			MatchName: func(key, field string) bool { return key == field },
		},
	})
	if err == nil {
		return c, nil
	}
	var unexpected error
	eachDecodeError(err, func(name string, reason error) {
		if name == "" {
			unexpected = reason
			return
		}
		l.fail(name, reason)
	})
	if unexpected != nil {
		return nil, fmt.Errorf("unmarshalling the configuration: %w", unexpected)
	}
	return c, nil
}

// eachDecodeError calls f with the key and reason of every field error in
// err, the wrapped and joined errors of a mapstructure decode; name is ""
// for an error that is about no field.
func eachDecodeError(err error, f func(name string, reason error)) {
	switch e := err.(type) {
	case *mapstructure.DecodeError:
		inner := e.Unwrap()
		if _, joined := inner.(interface{ Unwrap() []error }); joined {
			eachDecodeError(inner, f)
			return
		}
		// An element error ("derp.urls[0]") belongs to its key.
		name, _, _ := strings.Cut(e.Name(), "[")
		f(name, inner)
	case interface{ Unwrap() []error }:
		for _, inner := range e.Unwrap() {
			eachDecodeError(inner, f)
		}
	case interface{ Unwrap() error }:
		eachDecodeError(e.Unwrap(), f)
	default:
		f("", err)
	}
}

// fail records a decode error for key and marks it bad.
func (l *loader) fail(key string, err error) {
	l.bad[key] = true
	l.errorf(key, "%s", err.Error())
}

// convertValue is the decode hook of unmarshal: it turns a raw value, as
// the YAML file, an environment variable or a default gives it, into the
// Go type of the field it fills. Types not listed (the config sections,
// ExtraRecord) pass through.
func convertValue(_, to reflect.Type, v any) (any, error) {
	switch to {
	case reflect.TypeFor[string]():
		return toString(v)
	case reflect.TypeFor[bool]():
		return toBool(v)
	case reflect.TypeFor[int]():
		return toInt(v)
	case reflect.TypeFor[time.Duration]():
		return toDuration(v)
	case reflect.TypeFor[[]string]():
		return toStringList(v)
	case reflect.TypeFor[map[string][]string]():
		return toListMap(v)
	case reflect.TypeFor[[]ExtraRecord]():
		return toRecords(v)
	case reflect.TypeFor[netip.Prefix]():
		return toPrefix(v)
	case reflect.TypeFor[fs.FileMode]():
		return toFileMode(v)
	}
	return v, nil
}

// toPrefix parses a CIDR prefix; "" is the zero Prefix (none).
func toPrefix(v any) (netip.Prefix, error) {
	s, err := toString(v)
	if err != nil {
		return netip.Prefix{}, err
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s has host bits set; did you mean %s?", s, p.Masked())
	}
	return p, nil
}

// toFileMode parses octal permission bits such as "0770", "660" or "0o700".
func toFileMode(v any) (fs.FileMode, error) {
	var mode uint64
	var err error
	switch v := v.(type) {
	case string:
		s := strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(v), "0o"), "0O")
		mode, err = strconv.ParseUint(s, 8, 32)
	case int:
		// Only reachable programmatically: file values keep their text.
		if v < 0 {
			err = errors.New("negative")
		}
		mode = uint64(v)
	default:
		err = errors.New("not a string")
	}
	if err != nil || mode > 0o777 {
		return 0, fmt.Errorf("must be octal permission bits such as \"0770\", got %v", v)
	}
	return fs.FileMode(mode), nil
}

// toString accepts any scalar. The file gives string keys their literal
// text already (see loadFile); this handles other values.
func toString(v any) (string, error) {
	switch v := v.(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	case bool, int, int64, uint64, float64:
		return fmt.Sprint(v), nil
	default:
		return "", fmt.Errorf("must be a single value, not %s", describe(v))
	}
}

func toBool(v any) (bool, error) {
	switch v := v.(type) {
	case bool:
		return v, nil
	case string:
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true", "yes", "on", "1":
			return true, nil
		case "false", "no", "off", "0":
			return false, nil
		}
		return false, fmt.Errorf("must be true or false, got %q", v)
	default:
		return false, fmt.Errorf("must be true or false, not %s", describe(v))
	}
}

func toInt(v any) (int, error) {
	switch v := v.(type) {
	case int:
		return v, nil
	case int64:
		if v < math.MinInt || v > math.MaxInt {
			return 0, fmt.Errorf("%d is out of range", v)
		}
		return int(v), nil
	case uint64:
		if v > math.MaxInt {
			return 0, fmt.Errorf("%d is out of range", v)
		}
		return int(v), nil
	case float64:
		if v != math.Trunc(v) || v < math.MinInt || v > math.MaxInt {
			return 0, fmt.Errorf("must be a whole number, got %v", v)
		}
		return int(v), nil
	case string:
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return 0, fmt.Errorf("must be a whole number, got %q", v)
		}
		return n, nil
	default:
		return 0, fmt.Errorf("must be a whole number, not %s", describe(v))
	}
}

func toDuration(v any) (time.Duration, error) {
	switch v := v.(type) {
	case string:
		d, err := ParseDuration(v)
		if err != nil {
			return 0, err
		}
		return d, nil
	case int, int64, uint64, float64:
		if fmt.Sprint(v) == "0" {
			return 0, nil
		}
		return 0, fmt.Errorf("duration %v needs a unit, e.g. \"%vs\"", v, v)
	default:
		return 0, fmt.Errorf("must be a duration such as \"30s\" or \"90d\", not %s", describe(v))
	}
}

// toStringList accepts a YAML list of scalars, a YAML flow list given as a
// string ("[a, b]"), or a comma-separated string (the environment form).
func toStringList(v any) ([]string, error) {
	switch v := v.(type) {
	case nil:
		return []string{}, nil
	case []any:
		out := make([]string, 0, len(v))
		for i, item := range v {
			s, err := toString(item)
			if err != nil {
				return nil, fmt.Errorf("item %d: %w", i+1, err)
			}
			out = append(out, strings.TrimSpace(s))
		}
		return out, nil
	case []string:
		return append([]string{}, v...), nil
	case string:
		s := strings.TrimSpace(v)
		if strings.HasPrefix(s, "[") {
			var items []any
			if err := yamlv3.Unmarshal([]byte(s), &items); err != nil {
				return nil, fmt.Errorf("list %q does not parse: %w", s, err)
			}
			return toStringList(items)
		}
		out := []string{}
		for _, part := range strings.Split(s, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
		return out, nil
	default:
		return nil, fmt.Errorf("must be a list, not %s", describe(v))
	}
}

// toListMap accepts a mapping of names to lists, or the same as YAML text
// (the environment form, e.g. `{example.com: [10.0.0.53]}`).
func toListMap(v any) (map[string][]string, error) {
	switch v := v.(type) {
	case nil:
		return map[string][]string{}, nil
	case map[string]any:
		out := make(map[string][]string, len(v))
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			items, err := toStringList(v[k])
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			out[k] = items
		}
		return out, nil
	case string:
		if strings.TrimSpace(v) == "" {
			return map[string][]string{}, nil
		}
		var m map[string]any
		if err := yamlv3.Unmarshal([]byte(v), &m); err != nil {
			return nil, fmt.Errorf("must be a mapping such as {example.com: [10.0.0.53]}: %w", err)
		}
		return toListMap(m)
	default:
		return nil, fmt.Errorf("must be a mapping of domain to nameservers, not %s", describe(v))
	}
}

// toRecords accepts a list of {name, type, value} mappings, or the same as
// YAML text (the environment form).
func toRecords(v any) ([]ExtraRecord, error) {
	switch v := v.(type) {
	case nil:
		return []ExtraRecord{}, nil
	case []any:
		out := make([]ExtraRecord, 0, len(v))
		for i, item := range v {
			m, ok := item.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("record %d must be a mapping with name, type and value", i+1)
			}
			var r ExtraRecord
			fields := make([]string, 0, len(m))
			for field := range m {
				fields = append(fields, field)
			}
			sort.Strings(fields)
			for _, field := range fields {
				s, err := toString(m[field])
				if err != nil {
					return nil, fmt.Errorf("record %d: %s: %w", i+1, field, err)
				}
				switch field {
				case "name":
					r.Name = s
				case "type":
					r.Type = s
				case "value":
					r.Value = s
				default:
					return nil, fmt.Errorf("record %d: unknown field %q (want name, type, value)", i+1, field)
				}
			}
			out = append(out, r)
		}
		return out, nil
	case string:
		if strings.TrimSpace(v) == "" {
			return []ExtraRecord{}, nil
		}
		var items []any
		if err := yamlv3.Unmarshal([]byte(v), &items); err != nil {
			return nil, fmt.Errorf("must be a list such as [{name: a.example.com, type: A, value: 100.64.0.9}]: %w", err)
		}
		return toRecords(items)
	default:
		return nil, fmt.Errorf("must be a list of records, not %s", describe(v))
	}
}

func describe(v any) string {
	switch v.(type) {
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case nil:
		return "empty"
	default:
		return fmt.Sprintf("%T", v)
	}
}
