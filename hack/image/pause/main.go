// Command pause is the local cluster's pod sandbox process (containerd's
// sandbox_image): it holds the pod's namespaces open, reaps children that
// are re-parented to it (it is PID 1 when the pod shares its process
// namespace) and exits on SIGINT or SIGTERM. No image can be pulled on the
// machines this cluster runs on, so it is built here from this file.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s == syscall.SIGCHLD {
			reap()
			continue
		}
		os.Exit(0)
	}
}

// reap collects every child that has exited, so none stays a zombie; one
// SIGCHLD may stand for several exits.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
