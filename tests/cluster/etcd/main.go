// Command etcd is upstream etcd's own main (go.etcd.io/etcd/v3 main.go) built from the
// published server module: the root module's go.mod has local replace directives, so it
// cannot be required or `go install`ed directly.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
