// CoreDNS with only the plugins the local cluster's Corefile uses (realnode_config.corefile):
// bind, errors, cache and kubernetes. The stock binary links every plugin, including the
// cloud providers' SDKs, and takes several times as long to build.
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"

	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}
