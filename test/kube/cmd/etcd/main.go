// Command etcd is upstream's etcd server (server/main.go), built from the
// go.etcd.io/etcd/server/v3 version that k8s.io/kubernetes requires.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"

	"labwright.local/test/kube/internal/parentwatch"
)

func main() {
	parentwatch.Start()
	etcdmain.Main(os.Args)
}
