//go:build !unix

package pgcluster

import "syscall"

// runAsUser is the operating-system user that runs PostgreSQL when this
// process runs as root; it is not used on this platform.
const runAsUser = "postgres"

// runAsAttr runs commands as this process's user.
func runAsAttr() (attr *syscall.SysProcAttr, uid, gid int, err error) {
	return nil, -1, -1, nil
}

// processAlive cannot tell on this platform, so it says yes, which keeps
// orphaned clusters rather than risk stopping a live one.
func processAlive(pid int) bool { return true }
