package policy

import "math/bits"

// bitset is a set of node indices.
type bitset []uint64

func newBitset(n int) bitset { return make(bitset, (n+63)/64) }

func (b bitset) set(i int)      { b[i>>6] |= 1 << (uint(i) & 63) }
func (b bitset) clear(i int)    { b[i>>6] &^= 1 << (uint(i) & 63) }
func (b bitset) has(i int) bool { return i>>6 < len(b) && b[i>>6]&(1<<(uint(i)&63)) != 0 }

// or adds o's members. Sets from an older compilation may be shorter
// (fewer node slots) or, for a shared cache, longer with no members past
// b's end; only the common part is combined.
func (b bitset) or(o bitset) {
	for i := range min(len(b), len(o)) {
		b[i] |= o[i]
	}
}

// xor keeps the members in exactly one of b and o (b must be as long).
func (b bitset) xor(o bitset) {
	for i := range min(len(b), len(o)) {
		b[i] ^= o[i]
	}
}

func (b bitset) clone() bitset { return append(bitset(nil), b...) }
func (b bitset) empty() bool {
	for _, w := range b {
		if w != 0 {
			return false
		}
	}
	return true
}

func (b bitset) count() int {
	n := 0
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return n
}

// each calls f for every member in ascending order.
func (b bitset) each(f func(i int)) {
	for wi, w := range b {
		for w != 0 {
			t := bits.TrailingZeros64(w)
			f(wi<<6 | t)
			w &= w - 1
		}
	}
}

// grown returns a copy of b with room for n members.
func (b bitset) grown(n int) bitset {
	out := make(bitset, max(len(b), (n+63)/64))
	copy(out, b)
	return out
}

// patchBits returns b with member x present exactly when want(x), for
// each x in xs. b is copied (grown to n) only if a member changes; the
// second result reports whether it did.
func patchBits(b bitset, xs []int, n int, want func(x int) bool) (bitset, bool) {
	var out bitset
	for _, x := range xs {
		w := want(x)
		if b.has(x) == w {
			continue
		}
		if out == nil {
			out = b.grown(n)
		}
		if w {
			out.set(x)
		} else {
			out.clear(x)
		}
	}
	if out == nil {
		return b, false
	}
	return out, true
}
