package bench

import "syscall"

// sysProcAttr makes a child die with the bench (SIGKILL when the bench's
// thread that started it ends), so not even a bench killed by SIGKILL
// leaves a relay running.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
