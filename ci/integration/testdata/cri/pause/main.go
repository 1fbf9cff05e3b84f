// Command pause is the CRI sandbox ("pause") container of the CRI tests: it
// holds the pod's namespaces until it is told to stop, and, as PID 1 of a
// shared PID namespace, reaps the orphans it inherits. Built statically by
// the tests and pushed as the pinned sandbox image, since no public registry
// is reachable from the test machines.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			return
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
