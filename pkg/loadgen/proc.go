package loadgen

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat;
// Linux fixes it at 100 for user space on every architecture Go supports.
const clockTicks = 100

// ProcUsage is what one process used during a phase.
type ProcUsage struct {
	PID        int     `json:"pid"`
	CPUSeconds float64 `json:"cpu_s"`
	// PeakRSSBytes is the largest VmRSS sampled during the phase.
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
	// HWMBytes is VmHWM at the end of the phase: the process's peak RSS
	// over its whole life.
	HWMBytes int64 `json:"hwm_bytes"`
}

// procCPU reads a process's user+system CPU time.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces; fields resume after
	// the last ')'. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// procMem reads VmRSS and VmHWM in bytes.
func procMem(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if k == "VmRSS" {
			rss = n << 10
		} else {
			hwm = n << 10
		}
	}
	return rss, hwm, nil
}

// procWatch samples one process's RSS in the background and measures its
// CPU time per phase.
type procWatch struct {
	pid  int
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	peak     int64
	cpuStart time.Duration
	err      error
}

func newProcWatch(pid int, every time.Duration) (*procWatch, error) {
	if _, err := procCPU(pid); err != nil {
		return nil, err
	}
	w := &procWatch{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			w.sample()
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w, nil
}

func (w *procWatch) sample() {
	rss, _, err := procMem(w.pid)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.err = err
		return
	}
	w.peak = max(w.peak, rss)
}

// begin starts a phase: the CPU counter and the RSS peak restart.
func (w *procWatch) begin() {
	cpu, err := procCPU(w.pid)
	rss, _, _ := procMem(w.pid)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cpuStart, w.err, w.peak = cpu, err, rss
}

// end reports the phase's usage.
func (w *procWatch) end() (ProcUsage, error) {
	w.sample()
	cpu, err := procCPU(w.pid)
	_, hwm, _ := procMem(w.pid)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil {
		err = w.err
	}
	return ProcUsage{PID: w.pid, CPUSeconds: (cpu - w.cpuStart).Seconds(), PeakRSSBytes: w.peak, HWMBytes: hwm}, err
}

func (w *procWatch) close() {
	close(w.stop)
	<-w.done
}
