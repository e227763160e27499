// Command kube-apiserver is upstream's cmd/kube-apiserver, built from the
// k8s.io/kubernetes module pinned in ../../go.mod.
package main

import (
	"os"

	_ "time/tzdata" // for timeZone support in CronJob

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // load all the prometheus client-go plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/kubernetes/cmd/kube-apiserver/app"

	"labwright.local/test/kube/internal/parentwatch"
)

func main() {
	parentwatch.Start()
	command := app.NewAPIServerCommand()
	code := cli.Run(command)
	os.Exit(code)
}
