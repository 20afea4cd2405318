// Command etcd is the upstream etcd server, built from the go.etcd.io/etcd/server/v3
// module (the root etcd module replaces its submodules with local paths, so it cannot
// be go-installed directly).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
