//go:build !race

package mapper

// raceDetector is set when the race detector is on: TestLiveEqualsFresh
// then runs shorter sequences by default.
const raceDetector = false
