// Package cluster lets several servers serve one tailnet from one
// PostgreSQL database. Each server keeps its own state in memory and
// learns what the others stored from the database's change log: a
// listener wakes it when another server commits (PostgreSQL LISTEN/NOTIFY
// on a connection of its own), and a follower reads the records after the
// last one it applied and hands them to the state, in order, once each.
//
// Notifications are only a wake-up: the log is the truth. A follower
// that missed notifications (its connection dropped, it was busy) reads
// the log anyway on its safety poll and after every reconnect, so no
// record is lost and none is applied twice.
package cluster
