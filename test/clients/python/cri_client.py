"""A CRI client on Debian's python3-grpcio (gRPC C-core), as Python tools are.

It drives one pod sandbox through its life and prints a JSON line per call. Messages
come from `protoc --python_out` of the project's proto (PYTHONPATH points at them); the
calls go through grpc's generic unary_unary, as python3-grpc-tools is not packaged
in a version that matches. Usage: cri_client.py SOCKET POD_NAME [AUTHORITY]
(AUTHORITY sets grpc.default_authority, as a client that names the socket would).
With CRI_CLIENT_IDLE_S set, it connects and waits that long before its first call.
"""

import json
import os
import sys
import time

import grpc
from runtime.v1 import api_pb2 as cri

SERVICE = "/runtime.v1.RuntimeService/"


def call(channel, method, request, response_type):
    stub = channel.unary_unary(
        SERVICE + method,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_type.FromString,
    )
    try:
        return stub(request, timeout=30)
    except grpc.RpcError as error:
        sys.stderr.write(f"{method}: {error.code().name}: {error.details()}\n")
        sys.exit(1)


def emit(**fields):
    print(json.dumps(fields), flush=True)


def list_sandboxes(channel):
    r = call(channel, "ListPodSandbox", cri.ListPodSandboxRequest(), cri.ListPodSandboxResponse)
    items = [{"id": s.id, "state": cri.PodSandboxState.Name(s.state)} for s in r.items]
    emit(call="ListPodSandbox", items=items)


def main():
    if len(sys.argv) not in (3, 4):
        sys.stderr.write("usage: cri_client.py SOCKET POD_NAME [AUTHORITY]\n")
        sys.exit(2)
    socket, name = sys.argv[1], sys.argv[2]
    options = [("grpc.default_authority", sys.argv[3])] if len(sys.argv) == 4 else []
    with grpc.insecure_channel("unix:" + socket, options=options) as channel:
        idle = float(os.environ.get("CRI_CLIENT_IDLE_S", "0"))
        if idle > 0:
            grpc.channel_ready_future(channel).result(timeout=30)
            time.sleep(idle)
        emit(call="dial", grpcVersion=grpc.__version__, target="unix:" + socket)
        v = call(channel, "Version", cri.VersionRequest(version="v1"), cri.VersionResponse)
        emit(call="Version", runtimeName=v.runtime_name, runtimeApiVersion=v.runtime_api_version)

        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, namespace="default", uid="uid-" + name),
            hostname=name,
            labels={"app": name},
            linux=cri.LinuxPodSandboxConfig(
                security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=cri.NamespaceOption(network=cri.POD)
                )
            ),
        )
        run = call(
            channel,
            "RunPodSandbox",
            cri.RunPodSandboxRequest(config=config),
            cri.RunPodSandboxResponse,
        )
        emit(call="RunPodSandbox", podSandboxId=run.pod_sandbox_id)
        list_sandboxes(channel)

        sandbox = run.pod_sandbox_id
        call(
            channel,
            "StopPodSandbox",
            cri.StopPodSandboxRequest(pod_sandbox_id=sandbox),
            cri.StopPodSandboxResponse,
        )
        emit(call="StopPodSandbox")
        list_sandboxes(channel)

        call(
            channel,
            "RemovePodSandbox",
            cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox),
            cri.RemovePodSandboxResponse,
        )
        emit(call="RemovePodSandbox")
        list_sandboxes(channel)


if __name__ == "__main__":
    main()
