package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// clockTicks is USER_HZ, the unit of the CPU times in /proc/<pid>/stat; it
// is 100 on every Linux the bench runs on.
const clockTicks = 100

// dbCPUSeconds is the CPU time used so far by the local PostgreSQL server:
// every live process named "postgres" plus the children the postmaster has
// already reaped. The difference of two readings is the database's share
// of a measure. ok is false where /proc cannot tell (not Linux, or the
// server runs on another machine, in which case nothing is found).
func dbCPUSeconds() (secs float64, ok bool) {
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return 0, false
	}
	var ticks int64
	for _, d := range dirs {
		comm, err := os.ReadFile(filepath.Join(d, "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(d, "stat"))
		if err != nil {
			continue
		}
		// Fields after the parenthesised command name: state is field 3,
		// utime 14, stime 15, cutime 16, cstime 17 (1-based, proc(5)).
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 15 {
			continue
		}
		for _, idx := range []int{11, 12, 13, 14} { // utime, stime, cutime, cstime
			v, _ := strconv.ParseInt(f[idx], 10, 64)
			ticks += v
		}
		ok = true
	}
	return float64(ticks) / clockTicks, ok
}

// processCPUSeconds is the user and system CPU time of this process so far.
func processCPUSeconds() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
