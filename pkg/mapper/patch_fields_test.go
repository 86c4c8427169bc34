package mapper

import (
	"reflect"
	"testing"

	"tailscale.com/tailcfg"
)

// patchIgnored lists the tailcfg.PeerChange fields mergePatch does not fold
// from the newer patch, with why. Every other field must be merged.
var patchIgnored = map[string]string{
	"NodeID": "identifies the peer: both patches of a merge are for the same node",
}

// setNonZero sets v (a settable zero value) to some non-zero value of its
// type and reports whether it knew how.
func setNonZero(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(7)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		v.SetUint(7)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(7)
	case reflect.String:
		v.SetString("x")
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
	default:
		return false
	}
	return true
}

// TestMergePatchFields guards mergePatch's hand-written field list: each
// field of tailcfg.PeerChange set in the newer patch must survive the merge
// (and an unset one must keep the older value), unless patchIgnored names
// it. A field a Tailscale upgrade adds fails here until mergePatch handles
// it or patchIgnored says why not.
func TestMergePatchFields(t *testing.T) {
	typ := reflect.TypeFor[tailcfg.PeerChange]()
	for name := range patchIgnored {
		if _, ok := typ.FieldByName(name); !ok {
			t.Errorf("patchIgnored names %s, which tailcfg.PeerChange no longer has", name)
		}
	}
	for i := range typ.NumField() {
		f := typ.Field(i)
		if _, ok := patchIgnored[f.Name]; ok {
			continue
		}
		t.Run(f.Name, func(t *testing.T) {
			var newer tailcfg.PeerChange
			if !setNonZero(reflect.ValueOf(&newer).Elem().Field(i)) {
				t.Fatalf("PeerChange.%s has kind %s, which this test cannot fill; extend setNonZero", f.Name, f.Type.Kind())
			}
			older := &tailcfg.PeerChange{NodeID: 1}
			got := reflect.ValueOf(mergePatch(older, &newer)).Elem().Field(i)
			if got.IsZero() {
				t.Errorf("mergePatch drops PeerChange.%s: fold it from the newer patch, or list it in patchIgnored with the reason", f.Name)
			}
			// The other way round: a newer patch without the field keeps
			// the older value.
			kept := reflect.ValueOf(mergePatch(&newer, &tailcfg.PeerChange{NodeID: 1})).Elem().Field(i)
			if kept.IsZero() {
				t.Errorf("mergePatch loses the older PeerChange.%s when the newer patch does not set it", f.Name)
			}
		})
	}
}
