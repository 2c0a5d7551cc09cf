// Command pause is carve's own pause program for the test cluster's sandbox image (tagged
// registry.k8s.io/pause, which is not built here). Like Kubernetes' pause.c it holds the pod's
// namespaces, reaps the zombies it inherits as PID 1 of a shared PID namespace, and exits 0 on
// SIGINT or SIGTERM (PID 1 ignores signals it has no handler for, so the handler is required).
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("carve pause (test/standins/pause)")
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\n", s)
		os.Exit(0)
	}
}

// reap collects every exited child without blocking (several SIGCHLDs may arrive as one).
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
