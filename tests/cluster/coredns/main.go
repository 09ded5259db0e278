// CoreDNS for the test cluster's real node: upstream coremain with only the plugins the node's Corefile
// uses (real_node.py). No forward plugin: the cluster's names are all it answers, nothing goes upstream.
package main

import (
	"github.com/coredns/coredns/coremain"

	// The plugins, in place of upstream's core/plugin (which links all ~60 of them). The order a query passes
	// them in is upstream's directive list (core/dnsserver/zdirectives.go), whatever subset is linked.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
