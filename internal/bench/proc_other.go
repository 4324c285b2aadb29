//go:build !linux

package bench

import "syscall"

// sysProcAttr: elsewhere than Linux a child is killed by the bench's
// context and stop, not by the kernel when the bench dies.
func sysProcAttr() *syscall.SysProcAttr { return nil }
