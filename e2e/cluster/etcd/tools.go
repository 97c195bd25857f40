//go:build tools

// The blank import keeps the etcd server command in go.mod.
package tools

import _ "go.etcd.io/etcd/server/v3"
