//go:build unix

package pgcluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// runAsUser is the operating-system user that runs PostgreSQL when this
// process runs as root.
const runAsUser = "postgres"

// runAsAttr returns, when this process runs as root, the attributes that run
// a command as runAsUser and that user's uid and gid. Otherwise it returns
// nil and -1, -1: commands run as this process's user.
func runAsAttr() (attr *syscall.SysProcAttr, uid, gid int, err error) {
	if os.Geteuid() != 0 {
		return nil, -1, -1, nil
	}
	u, err := user.Lookup(runAsUser)
	if err != nil {
		return nil, -1, -1, fmt.Errorf("pgcluster: running as root, but initdb refuses to run as root, "+
			"and there is no user %q to run PostgreSQL as (%v); create one (useradd --system %s) "+
			"or run as an unprivileged user", runAsUser, err, runAsUser)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return nil, -1, -1, fmt.Errorf("pgcluster: user %s: %w", runAsUser, err)
	}
	// Groups is empty, so the command also drops root's supplementary groups.
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}, uid, gid, nil
}

// processAlive reports whether a process with this pid runs. A zombie, which
// has exited but not yet been reaped by its parent, does not count.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	// On Linux, the state follows the parenthesised command name.
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}
