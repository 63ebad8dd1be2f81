"""On the embedded default, nothing that a Ray session listens on beyond loopback answers without
Ray's token: the gRPC servers (GCS, raylet, object manager, core workers, dashboard agent) reject a
call without it, the agents' HTTP servers answer 401, and the Prometheus exporters, which check
nothing, are not there (they would be on 0.0.0.0)."""
from __future__ import annotations

import http.client
import ipaddress
import os
import time

import psutil
import pytest
import ray

from system.cluster import start_ray
from system.config import RayConfig

# One cheap method of each of Ray's gRPC services; an empty message is a valid request. The token
# is checked per method, so a service that a port does not host answers UNIMPLEMENTED instead.
PROBES = [
    "/ray.rpc.NodeInfoGcsService/GetClusterId",    # GCS
    "/ray.rpc.NodeManagerService/GetSystemConfig",  # raylet
    "/ray.rpc.CoreWorkerService/NumPendingTasks",   # driver and workers
    "/ray.rpc.ReporterService/HealthCheck",         # dashboard agent
    "/ray.rpc.ObjectManagerService/Pull",           # raylet's object manager
]
EXPORTER_KEYS = [b"DashboardMetricsAddress", b"AutoscalerMetricsAddress"]  # where Ray says they are


@pytest.fixture
def embedded_ray():
    """The embedded cluster exactly as `harmonyray train` starts it; shut down afterwards (a module
    that needs Ray after this one starts its own, see conftest.ray_local)."""
    ray.shutdown()  # start_ray keeps a cluster that is already up; this test needs its own
    saved = {k: os.environ.get(k) for k in ("DASHBOARD_METRIC_PORT", "AUTOSCALER_METRIC_PORT")}
    start_ray(RayConfig(num_cpus=2, resources={"minecraft": 3}))
    try:
        assert {k: os.environ.get(k) for k in saved} == saved, "start_ray leaves the environment as it was"
        assert ray.cluster_resources().get("minecraft") == 3, "ray.resources are what the embedded cluster offers"
        yield ray._private.worker.global_worker.node
    finally:
        ray.shutdown()


def session_processes(node) -> dict[int, psutil.Process]:
    """The driver, Ray's daemons of this session (their command lines name its directory; they may
    not be the driver's children) and everything they started (agents, workers)."""
    session_dir = node.get_session_dir_path()
    roots = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if session_dir in " ".join(proc.info["cmdline"] or []):
                roots[proc.pid] = proc
        except psutil.Error:
            pass
    assert roots, f"no process of session {session_dir}"
    found = {os.getpid(): psutil.Process()}
    for proc in roots.values():
        found[proc.pid] = proc
        try:
            found.update((child.pid, child) for child in proc.children(recursive=True))
        except psutil.Error:
            pass
    return found


def listeners(procs: dict[int, psutil.Process]) -> list[tuple[str, int, int, str]]:
    """(address, port, pid, process name) of every listening TCP socket of these processes."""
    out = []
    for pid, proc in procs.items():
        try:
            cmdline = proc.cmdline()
            script = next((os.path.basename(a) for a in cmdline[1:] if a.endswith(".py")), "")
            name = f"{proc.name()} {script}".strip()  # e.g. `python monitor.py`, `ray::DashboardAgent`
            out += [(c.laddr.ip, c.laddr.port, pid, name) for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass  # an idle worker that exited meanwhile
    return out


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def grpc_rejects_without_token(host: str, port: int) -> bool:
    """True when a gRPC call without the token gets UNAUTHENTICATED (and none succeeds)."""
    import grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        for method in PROBES:
            try:
                channel.unary_unary(method)(b"", timeout=3)
                return False  # answered without the token
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                    return True
                if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return False  # not a gRPC server (HTTP/1, e.g. an exporter)
    return False


def http_get(host: str, port: int) -> int | str:
    """The status of `GET /metrics` without a token, or why there was none."""
    conn = http.client.HTTPConnection(host, port, timeout=3)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().status
    except ConnectionRefusedError:
        return "refused"
    except (OSError, http.client.HTTPException) as error:
        return type(error).__name__  # e.g. a gRPC server that does not speak HTTP/1
    finally:
        conn.close()


def test_nothing_answers_without_the_token_beyond_loopback(embedded_ray):
    node = embedded_ray

    @ray.remote(num_cpus=0)
    class Probe:
        def pid(self) -> int:
            return os.getpid()

    actor = Probe.remote()
    actor_pid = ray.get(actor.pid.remote(), timeout=60)  # workers and both agents are up now
    info = next(n for n in ray.nodes() if n["NodeID"] == node.node_id)
    host = node.node_ip_address

    deadline = time.monotonic() + 20  # the agents report their ports a little after ray.init
    while True:
        procs = session_processes(node)
        sockets = listeners(procs)
        ports = {port for _, port, _, _ in sockets}
        expected = {node.gcs_address.rpartition(":")[2], info["NodeManagerPort"], info["ObjectManagerPort"]}
        if actor_pid in procs and {int(p) for p in expected} <= ports or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert actor_pid in procs, "the actor's worker is found as a process of the session"
    assert {int(p) for p in expected} <= ports, f"GCS, raylet and object manager ports {expected} among the listeners {sorted(ports)}"

    open_servers, checked = [], set()
    for address, port, pid, name in sockets:
        if is_loopback(address):
            continue
        probe_host = host if ipaddress.ip_address(address.split("%")[0]).is_unspecified else address
        if grpc_rejects_without_token(probe_host, port):
            checked.add(port)
            continue
        status = http_get(probe_host, port)
        if status in (401, 403):  # the dashboard agent's and the runtime env agent's HTTP servers
            checked.add(port)
            continue
        open_servers.append(f"{name} (pid {pid}) listens on {address}:{port} and answers without the token: GET /metrics -> {status}")
    assert not open_servers, "servers beyond loopback that do not check Ray's token:\n" + "\n".join(open_servers)
    assert {int(p) for p in expected} <= checked, "the probe recognises Ray's token check"

    # The Prometheus exporters where the session says they are: nothing answers via the node IP.
    exporters = {"dashboard agent (metrics_export_port)": info["MetricsExportPort"]}
    for key in EXPORTER_KEYS:
        value = ray.experimental.internal_kv._internal_kv_get(key)
        if value:
            exporters[key.decode()] = int(value.decode().rpartition(":")[2])
    ours = {port for _, port, _, _ in sockets}
    for what, port in exporters.items():
        if 0 < port < 65536 and port in ours:  # a port that no process of this session holds may be another run's
            assert http_get(host, port) == "refused", f"the {what} exporter answers on {host}:{port}"
