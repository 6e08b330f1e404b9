// cnirun is the tests' container runtime for CNI: it calls a plugin chain through the reference
// libcni library (containernetworking/cni, Debian's golang-github-appc-cni-dev), the code containerd
// and CRI-O use, so meshnet-cni meets the same exec protocol, prevResult chaining and cache as on a node.
//
//	cnirun add|check|del CONFLIST NETNS CONTAINER_ID IFNAME [CNI_ARGS] [CAPABILITY_ARGS_JSON]
//
// CNI_ARGS is "K=V;K=V" as kubelet's runtimes pass it (IgnoreUnknown=1 keeps the reference plugins
// from rejecting the K8S_* keys). CAPABILITY_ARGS_JSON fills runtimeConfig for the capabilities a
// plugin declares, e.g. {"io.kubernetes.cri.pod-annotations": {...}} as containerd does.
// Both CNI_PATH and CNI_CACHE_DIR must be set: a test's cache lives in its own temp dir, never in
// the host's /var/lib/cni. Exit 0 on success (add prints the result JSON), 1 when a plugin fails
// (its message on stderr), 2 for a bad command line.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

const usage = "usage: cnirun add|check|del CONFLIST NETNS CONTAINER_ID IFNAME [CNI_ARGS] [CAPABILITY_ARGS_JSON]"

func die(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cnirun: "+format+"\n", args...)
	os.Exit(code)
}

func parseArgs(s string) [][2]string {
	var out [][2]string
	if s == "" {
		return out
	}
	for _, kv := range strings.Split(s, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			die(2, "CNI_ARGS entry %q is not KEY=VALUE", kv)
		}
		out = append(out, [2]string{k, v})
	}
	return out
}

func main() {
	if len(os.Args) < 6 || len(os.Args) > 8 {
		die(2, "%s", usage)
	}
	op, confPath, netns, cid, ifname := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5]
	if op != "add" && op != "check" && op != "del" {
		die(2, "unknown operation %q; %s", op, usage)
	}
	path, cache := os.Getenv("CNI_PATH"), os.Getenv("CNI_CACHE_DIR")
	if path == "" || cache == "" {
		die(2, "CNI_PATH and CNI_CACHE_DIR must both be set")
	}
	list, err := libcni.ConfListFromFile(confPath)
	if err != nil {
		die(2, "%s: %v", confPath, err)
	}
	rt := &libcni.RuntimeConf{ContainerID: cid, NetNS: netns, IfName: ifname}
	if len(os.Args) > 6 {
		rt.Args = parseArgs(os.Args[6])
	}
	if len(os.Args) > 7 && os.Args[7] != "" {
		if err := json.Unmarshal([]byte(os.Args[7]), &rt.CapabilityArgs); err != nil {
			die(2, "capability args: %v", err)
		}
	}
	cni := libcni.NewCNIConfigWithCacheDir(strings.Split(path, ":"), cache, nil)
	ctx := context.Background()
	switch op {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			die(1, "%v", err)
		}
		out, err := json.Marshal(res)
		if err != nil {
			die(1, "result: %v", err)
		}
		fmt.Println(string(out))
	case "check":
		err = cni.CheckNetworkList(ctx, list, rt)
	case "del":
		err = cni.DelNetworkList(ctx, list, rt)
	}
	if err != nil {
		die(1, "%v", err)
	}
}
