// A CRI client as kubelet 1.26 and crictl before 1.29 are: grpc-go (Debian's 1.33) dialing
// the bare socket path with a unix dialer, so every request carries the path as
// :authority. It drives one pod sandbox through its life and prints a JSON line per call.
// Usage: cri-client-go SOCKET POD_NAME
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	cri "vmlet.test/runtime/v1"
)

type item struct {
	ID    string `json:"id"`
	State string `json:"state"`
}

func emit(v map[string]interface{}) {
	line, _ := json.Marshal(v)
	fmt.Println(string(line))
}

func fail(call string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", call, err)
	os.Exit(1)
}

func list(ctx context.Context, c cri.RuntimeServiceClient) {
	r, err := c.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{})
	if err != nil {
		fail("ListPodSandbox", err)
	}
	items := []item{}
	for _, s := range r.Items {
		items = append(items, item{ID: s.Id, State: s.State.String()})
	}
	emit(map[string]interface{}{"call": "ListPodSandbox", "items": items})
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: cri-client-go SOCKET POD_NAME")
		os.Exit(2)
	}
	socket, name := os.Args[1], os.Args[2]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// kubelet 1.26's remote runtime dial: the target is the path itself, so grpc-go
	// takes it as the authority.
	conn, err := grpc.DialContext(ctx, socket, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}))
	if err != nil {
		fail("dial", err)
	}
	defer conn.Close()
	emit(map[string]interface{}{"call": "dial", "grpcVersion": grpc.Version, "target": conn.Target()})
	c := cri.NewRuntimeServiceClient(conn)

	v, err := c.Version(ctx, &cri.VersionRequest{Version: "v1"})
	if err != nil {
		fail("Version", err)
	}
	emit(map[string]interface{}{"call": "Version", "runtimeName": v.RuntimeName, "runtimeApiVersion": v.RuntimeApiVersion})

	run, err := c.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: &cri.PodSandboxConfig{
		Metadata: &cri.PodSandboxMetadata{Name: name, Namespace: "default", Uid: "uid-" + name},
		Hostname: name,
		Labels:   map[string]string{"app": name},
		Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{
			NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_POD}}},
	}})
	if err != nil {
		fail("RunPodSandbox", err)
	}
	emit(map[string]interface{}{"call": "RunPodSandbox", "podSandboxId": run.PodSandboxId})
	list(ctx, c)

	if _, err := c.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: run.PodSandboxId}); err != nil {
		fail("StopPodSandbox", err)
	}
	emit(map[string]interface{}{"call": "StopPodSandbox"})
	list(ctx, c)

	if _, err := c.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: run.PodSandboxId}); err != nil {
		fail("RemovePodSandbox", err)
	}
	emit(map[string]interface{}{"call": "RemovePodSandbox"})
	list(ctx, c)
}
