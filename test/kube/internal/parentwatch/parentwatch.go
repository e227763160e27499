// Package parentwatch ends the process when the process that started it goes
// away, so that a test run that dies (a killed vitest worker, say) does not
// leave a kube-apiserver or etcd behind. It acts only when the environment
// variable LABWRIGHT_EXIT_WITH_PARENT is set, as test/harness/kube.ts does.
package parentwatch

import (
	"fmt"
	"os"
	"time"
)

// Start watches the parent process in the background: once this process is
// re-parented (its parent exited), it exits with status 2.
func Start() {
	if os.Getenv("LABWRIGHT_EXIT_WITH_PARENT") == "" {
		return
	}
	parent := os.Getppid()
	go func() {
		for range time.Tick(500 * time.Millisecond) {
			if os.Getppid() != parent {
				fmt.Fprintf(os.Stderr, "parentwatch: parent process %d is gone; exiting\n", parent)
				os.Exit(2)
			}
		}
	}()
}
