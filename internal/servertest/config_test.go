package servertest

import (
	"reflect"
	"testing"
)

func TestMergeYAML(t *testing.T) {
	tests := []struct {
		name             string
		base, over, want map[string]any
	}{
		{"new key added", map[string]any{"a": 1}, map[string]any{"b": 2}, map[string]any{"a": 1, "b": 2}},
		{"scalar replaced", map[string]any{"a": 1}, map[string]any{"a": "x"}, map[string]any{"a": "x"}},
		{"maps merged key by key",
			map[string]any{"derp": map[string]any{"server": map[string]any{"stun": "x", "keep": true}}},
			map[string]any{"derp": map[string]any{"server": map[string]any{"stun": "y"}, "urls": []any{"u"}}},
			map[string]any{"derp": map[string]any{"server": map[string]any{"stun": "y", "keep": true}, "urls": []any{"u"}}}},
		{"map replaced by a scalar", map[string]any{"a": map[string]any{"b": 1}}, map[string]any{"a": nil}, map[string]any{"a": nil}},
		{"nothing over", map[string]any{"a": 1}, nil, map[string]any{"a": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mergeYAML(tt.base, tt.over); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("mergeYAML = %v, want %v", got, tt.want)
			}
		})
	}
}
