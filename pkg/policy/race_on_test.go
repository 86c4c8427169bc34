//go:build race

package policy

// raceDetector is set when the race detector is on: TestCompatCaptures,
// a data comparison, then skips (under the detector it takes a minute).
const raceDetector = true
