package policy

import (
	"maps"
	"math"
	"slices"
)

// Copy-on-write containers. A compilation derived by Update shares
// everything it does not change with the compilation it came from, which
// stays valid and unchanged (sessions may still be reading it), so
// per-node data lives in chunks that are copied only when written, and
// large maps are an immutable base plus a small overlay of changes.

const (
	chunkShift = 7
	chunkLen   = 1 << chunkShift
)

// vec is a per-node array stored in fixed-size chunks.
type vec[T any] struct{ chunks []*[chunkLen]T }

func newVec[T any](n int) vec[T] {
	v := vec[T]{chunks: make([]*[chunkLen]T, (n+chunkLen-1)>>chunkShift)}
	for i := range v.chunks {
		v.chunks[i] = new([chunkLen]T)
	}
	return v
}

// at returns element i; callers must not modify it (it may be shared).
func (v vec[T]) at(i int) *T { return &v.chunks[i>>chunkShift][i&(chunkLen-1)] }

// vecEdit builds a new version of a vec, copying a chunk on its first
// write and growing as needed.
type vecEdit[T any] struct {
	v     vec[T]
	owned []bool
	copy  func(dst, src *[chunkLen]T) // nil: plain assignment
}

func (v vec[T]) edit(copyFn func(dst, src *[chunkLen]T)) *vecEdit[T] {
	return &vecEdit[T]{v: vec[T]{chunks: slices.Clone(v.chunks)}, owned: make([]bool, len(v.chunks)), copy: copyFn}
}

// mut returns element i for writing.
func (e *vecEdit[T]) mut(i int) *T {
	ci := i >> chunkShift
	for ci >= len(e.v.chunks) {
		e.v.chunks = append(e.v.chunks, new([chunkLen]T))
		e.owned = append(e.owned, true)
	}
	if !e.owned[ci] {
		c := new([chunkLen]T)
		if e.copy != nil {
			e.copy(c, e.v.chunks[ci])
		} else {
			*c = *e.v.chunks[ci]
		}
		e.v.chunks[ci] = c
		e.owned[ci] = true
	}
	return &e.v.chunks[ci][i&(chunkLen-1)]
}

// pmap is a map shared between compilations: an immutable base and an
// immutable overlay of later changes (deletions included). Edits copy
// the overlay only; when it grows past about the square root of the base
// it is folded into a new base, so updates cost O(sqrt(n)) amortised.
type pmap[K comparable, V any] struct {
	base  map[K]V
	delta map[K]pmapEntry[V]
}

type pmapEntry[V any] struct {
	v  V
	ok bool
}

func (m pmap[K, V]) get(k K) (V, bool) {
	if e, ok := m.delta[k]; ok {
		return e.v, e.ok
	}
	v, ok := m.base[k]
	return v, ok
}

// each calls f for every entry, in no particular order.
func (m pmap[K, V]) each(f func(K, V)) {
	for k, v := range m.base {
		if _, ok := m.delta[k]; !ok {
			f(k, v)
		}
	}
	for k, e := range m.delta {
		if e.ok {
			f(k, e.v)
		}
	}
}

// pmapEdit builds a new version of a pmap.
type pmapEdit[K comparable, V any] struct {
	m      pmap[K, V]
	cloned bool
}

func (m pmap[K, V]) edit() *pmapEdit[K, V] { return &pmapEdit[K, V]{m: m} }

func (e *pmapEdit[K, V]) get(k K) (V, bool) { return e.m.get(k) }

func (e *pmapEdit[K, V]) put(k K, v V, ok bool) {
	if !e.cloned {
		e.m.delta = maps.Clone(e.m.delta)
		if e.m.delta == nil {
			e.m.delta = map[K]pmapEntry[V]{}
		}
		e.cloned = true
	}
	e.m.delta[k] = pmapEntry[V]{v, ok}
}

func (e *pmapEdit[K, V]) set(k K, v V) { e.put(k, v, true) }

func (e *pmapEdit[K, V]) del(k K) {
	var zero V
	if _, ok := e.m.get(k); ok {
		e.put(k, zero, false)
	}
}

func (e *pmapEdit[K, V]) done() pmap[K, V] {
	m := e.m
	if len(m.delta) <= 32+2*isqrt(len(m.base)) {
		return m
	}
	base := make(map[K]V, len(m.base)+len(m.delta))
	maps.Copy(base, m.base)
	for k, en := range m.delta {
		if en.ok {
			base[k] = en.v
		} else {
			delete(base, k)
		}
	}
	return pmap[K, V]{base: base}
}

func isqrt(n int) int { return int(math.Sqrt(float64(n))) }
