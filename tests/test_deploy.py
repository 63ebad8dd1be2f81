"""deploy/: the cluster files parse and agree with the project, keep Ray's token authentication on
and the dashboard private, and carry no secret; and a real `ray job submit` against a
token-protected `ray start --head` on this machine trains a tiny run, while clients without the
token are turned away.

The live tests start their own single-node cluster with the `ray` CLI in subprocesses (never
`ray.init()` here, which may already hold another cluster in this pytest process) and talk only to
this machine. Cleanup stops exactly that cluster's processes, even when a test fails.
"""
from __future__ import annotations

import importlib.metadata
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray
import yaml

from system.config import apply_overrides, load_config, presets

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
RAY_CLI = str(BIN / "ray")
HARMONYRAY = str(BIN / "harmonyray")

# A run that finishes in well under a minute on 2 cores: one runner, one shard and no evaluator
# (each actor is a process to start; the job's path through Ray is the point here).
TINY = [
    "agent.model.deter=32", "agent.model.hidden=32", "agent.model.stoch=4", "agent.model.classes=4",
    "agent.model.layers=1", "agent.model.reward_bins=31", "agent.behavior.horizon=5",
    "train.batch_size=4", "train.seq_len=8", "train.train_ratio=4", "train.prefill=300", "train.publish_every=2",
    "runners.count=1", "runners.chunk_length=8", "runners.num_cpus=0.5", "replay.shards=1", "replay.capacity=5000",
    "run.log_every=0.5", "run.checkpoint_every=1000", "run.eval_episodes=0", "wandb.mode=disabled", "run.steps=500",
    "learner.threads=1",  # see tests/test_runtime.py
]


# --- the files ---------------------------------------------------------------------------------

def _text(name: str) -> str:
    return (DEPLOY / name).read_text()


def _rayjob_docs() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(_text("rayjob.yaml")) if d]
    return {d["kind"]: d for d in docs}


def _cluster() -> dict:
    return yaml.safe_load(_text("cluster.yaml"))


def _pod_specs(rayjob: dict) -> dict[str, dict]:
    spec = rayjob["spec"]["rayClusterSpec"]
    pods = {"head": spec["headGroupSpec"]}
    pods.update({g["groupName"]: g for g in spec["workerGroupSpecs"]})
    return pods


def _start_resources(group: dict) -> dict[str, float]:
    # KubeRay passes rayStartParams.resources to `ray start --resources=...`: a quoted JSON string.
    raw = group["rayStartParams"].get("resources", '"{}"')
    return json.loads(raw.strip("'\"").replace('\\"', '"'))


def _readme_code() -> str:
    """The fenced code blocks of deploy/README.md, with `\\` line continuations joined."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", _text("README.md"), flags=re.S)
    return "\n".join(blocks).replace("\\\n", " ")


def _harmonyray_commands(text: str) -> list[list[str]]:
    """Each `harmonyray <command> ...` in text, up to the end of its shell command."""
    found = re.findall(r"harmonyray\s+((?:train|resume|eval)\b[^\"\n;|&`]*)", text)
    return [shlex.split(c, comments=True) for c in found]


def _deploy_commands() -> list[list[str]]:
    entry = _rayjob_docs()["RayJob"]["spec"]["entrypoint"]
    return _harmonyray_commands(entry) + _harmonyray_commands(_readme_code())


def _split_train(args: list[str]) -> tuple[str, str | None, list[str]]:
    assert args[0] == "train"
    config, logdir, overrides, rest = None, None, [], iter(args[1:])
    for arg in rest:
        if arg == "--config":
            config = next(rest)
        elif arg == "--logdir":
            logdir = next(rest)
        elif arg != "--no-progress":
            overrides.append(arg)
    assert config, f"train without --config: {args}"
    return config, logdir, overrides


def test_files_parse_and_hold_what_they_should():
    cluster = _cluster()
    assert cluster["provider"]["type"] == "aws"
    assert set(cluster["available_node_types"]) == {"head", "cpu", "minecraft"}
    kinds = _rayjob_docs()
    assert set(kinds) == {"RayJob", "PersistentVolumeClaim", "NetworkPolicy"}
    assert kinds["RayJob"]["apiVersion"] == "ray.io/v1"
    assert set(_pod_specs(kinds["RayJob"])) == {"head", "cpu", "minecraft"}
    readme = _text("README.md")
    for needle in ("ray job submit --address http://127.0.0.1:8265 --runtime-env-json '{\"working_dir\": \".\"}'",
                   "ray.address=auto", "harmonyray resume", "runners.resources_per_env.minecraft=1", "instance"):
        assert needle in readme, needle


def test_cluster_yaml_passes_the_launchers_own_checks():
    # What `ray up` does before it talks to AWS: fill in the provider defaults, then validate.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(_cluster())
    validate_config(prepared)
    # The defaults would otherwise add a `pip install` of a Ray nightly to every node.
    assert prepared["setup_commands"] == prepared["head_setup_commands"] == prepared["worker_setup_commands"] == []


def test_commands_use_existing_entry_points_presets_and_config_keys():
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="harmonyray")
    assert script.value == "system.cli:main"
    assert Path(HARMONYRAY).is_file()
    from system import cli

    assert callable(cli.main)
    commands = _deploy_commands()
    assert any(c[0] == "train" for c in commands) and any(c[0] == "resume" for c in commands)
    for args in commands:
        if args[0] == "train":
            config, _, overrides = _split_train(args)
            assert config in presets(), f"{config} is not a preset in configs/"
            assert "ray.address=auto" in overrides, f"a cluster job must join its cluster: {args}"
            load_config(config, overrides)  # raises on an unknown key or a bad value
        elif args[0] == "resume":
            assert args[1].startswith("/data/runs/"), args
            apply_overrides(load_config("cartpole"), [a for a in args[2:] if a != "--no-progress"])


def test_custom_resources_match_the_config_keys_and_the_shared_run_directory():
    # rayjob.yaml: the entrypoint's resources exist on the right pods, and the logdir is on the
    # ReadWriteMany volume that every pod mounts at the same path.
    docs = _rayjob_docs()
    pods = _pod_specs(docs["RayJob"])
    offered = {name: _start_resources(group) for name, group in pods.items()}
    assert offered == {"head": {"learner": 1}, "cpu": {"runner": 8}, "minecraft": {"minecraft": 4}}
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    claim = docs["PersistentVolumeClaim"]["metadata"]["name"]
    for name, group in pods.items():
        spec = group["template"]["spec"]
        volume = next(v["name"] for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim)
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert mounts[volume] == "/data", name
    train = next(c for c in _harmonyray_commands(docs["RayJob"]["spec"]["entrypoint"]) if c[0] == "train")
    _, logdir, overrides = _split_train(train)
    assert logdir.startswith("/data/runs/")
    config = load_config("cartpole", overrides)
    assert set(config.learner.resources) <= set(offered["head"])
    assert set(config.runners.resources) <= set(offered["cpu"])

    # cluster.yaml: the same resources per node type, and /data on the shared file system.
    cluster = _cluster()
    types = cluster["available_node_types"]
    assert {k: v["resources"] for k, v in types.items()} == {"head": {"learner": 1}, "cpu": {"runner": 8}, "minecraft": {"minecraft": 4}}
    assert "-v /mnt/efs/harmonyray:/data" in cluster["docker"]["run_options"]
    assert "harmonyray-minecraft" in types["minecraft"]["docker"]["worker_image"]
    for args in _harmonyray_commands(_readme_code()):
        if args[0] == "train":
            preset, logdir, overrides = _split_train(args)
            assert logdir and logdir.startswith("/data/runs/"), args
            config = load_config(preset, overrides)
            offered_anywhere = set().union(*(t["resources"] for t in types.values()))
            asked = set(config.learner.resources) | set(config.runners.resources) | set(config.runners.resources_per_env)
            assert asked <= offered_anywhere, args


def test_token_auth_is_on_and_the_dashboard_private():
    # (the README's prose names RAY_AUTH_MODE=disabled as what never to set: only its code counts)
    for name in ("cluster.yaml", "rayjob.yaml", "Dockerfile", "Dockerfile.minecraft", "README.md"):
        text = _readme_code() if name == "README.md" else _text(name)
        assert not re.search(r"RAY_AUTH_MODE\W{0,3}(=|:|value:)\W{0,3}disabled", text), name
        assert not re.search(r"mode:\s*disabled", text), name

    cluster = _cluster()
    options = cluster["docker"]["run_options"]
    assert "-e RAY_AUTH_MODE=token" in options
    token_path = next(o.split("=", 1)[1] for o in options if o.startswith("-e RAY_AUTH_TOKEN_PATH="))
    # The token file comes from a synced secrets directory, mounted at the container user's home.
    mounted = [m.replace("~", "/home/harmony") for m in cluster["file_mounts"]]
    assert any(token_path.startswith(m + "/") for m in mounted)
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    assert "dashboard-host" not in " ".join(cluster["worker_start_ray_commands"])

    docs = _rayjob_docs()
    rayjob = docs["RayJob"]["spec"]
    assert rayjob["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    assert rayjob["rayClusterSpec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    for name, group in _pod_specs(docs["RayJob"]).items():
        labels = group["template"]["metadata"]["labels"]
        assert labels == docs["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"], name
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token", name
            # a secret is referenced, never written into the manifest
            for key in ("RAY_AUTH_TOKEN", "WANDB_API_KEY"):
                assert "value" not in env.get(key, {}), (name, key)
    head_env = {e["name"]: e for e in _pod_specs(docs["RayJob"])["head"]["template"]["spec"]["containers"][0]["env"]}
    assert head_env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "harmonyray-wandb"
    # Only the operator and the submitter may reach the dashboard port from outside the run's pods.
    policy = docs["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    outside = [rule for rule in policy["ingress"] if rule["from"][0]["podSelector"]["matchLabels"] != policy["podSelector"]["matchLabels"]]
    assert outside and all(rule["ports"] == [{"port": 8265, "protocol": "TCP"}] for rule in outside)


def _dockerfile(name: str) -> tuple[str, dict[str, str]]:
    text = _text(name)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
    return text, args


def test_dockerfiles_install_torch_and_the_project_and_hold_no_secret():
    makefile_torch = re.search(r"torch==([\w.]+)", (ROOT / "Makefile").read_text()).group(1)
    text, args = _dockerfile("Dockerfile")
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["PYTHON_VERSION"]), "Ray needs the same Python patch version on every node"
    assert args["TORCH_VERSION"] == makefile_torch
    assert args["RAY_VERSION"] == ray.__version__ == _rayjob_docs()["RayJob"]["spec"]["rayClusterSpec"]["rayVersion"]
    assert 'pip install ${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"} "torch==${TORCH_VERSION}"' in text
    assert "torch.version.cuda" in text  # the build stops on a CPU-only torch
    assert 'pip install -e ".[${EXTRAS}]"' in text
    include = re.search(r"^include = \[(.*)\]", (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    for package in re.findall(r'"(\w+)\*"', include) + ["configs"]:
        assert f"COPY {package} ./{package}" in text, package
    assert "ENV" in text and "RAY_AUTH_MODE=token" in text

    mine, mine_args = _dockerfile("Dockerfile.minecraft")
    assert "FROM ${BASE_IMAGE}" in mine  # same Python and Ray as the rest of the cluster
    assert mine_args["GYM_VERSION"] == "0.21.0" and mine_args["MINEDOJO_VERSION"] == "0.1"
    assert '"minedojo==${MINEDOJO_VERSION}"' in mine and '"numpy>=1.26,<2"' in mine
    assert "eclipse-temurin:8-jdk" in mine and "JAVA_HOME" in mine
    assert "NOT BUILT OR TESTED ON OUR CI MACHINES" in mine

    for name, content in (("Dockerfile", text), ("Dockerfile.minecraft", mine)):
        users = re.findall(r"^USER (\S+)", content, flags=re.M)
        assert users and users[-1] not in ("root", "0"), f"{name} must end as a non-root user"
        assert not re.search(r"^(COPY|ADD)\s+\.\s", content, flags=re.M), f"{name} copies the whole context"
        # no secret-bearing build argument or environment variable, and nothing token-like
        names = re.findall(r"^(?:ARG|ENV)\s+(\w+)", content, flags=re.M)
        names += re.findall(r"^\s+(\w+)=", content, flags=re.M)
        assert not [n for n in names if re.search(r"TOKEN|SECRET|PASSWORD|API_KEY", n)], name
        assert not re.search(r"\b[0-9a-f]{32,}\b", content), name
        assert "auth_token" not in content and "netrc" not in content, name


def test_no_file_in_deploy_holds_a_secret():
    for path in (p for p in DEPLOY.iterdir() if p.is_file()):
        text = path.read_text()
        assert not re.search(r"\b[0-9a-f]{40,}\b", text), path.name  # Ray tokens are 64 hex digits
        assert not re.search(r"(WANDB_API_KEY|RAY_AUTH_TOKEN)=(?![\"']?\$)['\"]?\w{8,}", text), path.name


# --- a real token-protected cluster on this machine ----------------------------------------------

@dataclass
class Head:
    gcs: str  # the GCS address, on this machine
    dashboard: str  # the job API, on 127.0.0.1
    dashboard_port: int
    env: dict[str, str]  # the environment of a client that holds the token
    root: Path  # this cluster's temp dir: token, Ray session, run directory


def _client_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Ray setting (an embedded cluster of another test
    may have set some), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def _ray(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([RAY_CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_ready(head: Head, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if _ray(["job", "list", "--address", head.dashboard], head.env).returncode == 0:
            return
        time.sleep(1)
    pytest.fail(f"the head's job API did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _pids_holding(marker: str) -> list[int]:
    """Processes whose environment names our temp dir: every process of our cluster inherits
    RAY_AUTH_TOKEN_PATH (or HOME) from `ray start`, including workers and the job's driver, which
    leave its process group."""
    pids, needle = [], marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours
            pass
    return pids


def _stop_head(proc: subprocess.Popen | None, root: Path) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops all its node's processes on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only processes it started
            proc.wait()
    # Give the rest a few seconds to finish their own shutdown, then kill what remains, and wait
    # until none is left: one still running could write into the temp dir after it is removed.
    deadline = time.monotonic() + 10
    while _pids_holding(str(root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _pids_holding(str(root)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while _pids_holding(str(root)) and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.fixture(scope="module")
def token_head():
    # A short path: Ray's Unix socket paths under the session dir must stay below 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="hr-deploy-"))
    proc = None
    try:
        # `ray get-auth-token --generate` writes ~/.ray/auth_token: give it a HOME of its own so the
        # user's token stays untouched, then point RAY_AUTH_TOKEN_PATH at the new file.
        home = root / "home"
        home.mkdir()
        generated = _ray(["get-auth-token", "--generate"], _client_env(HOME=str(home)))
        token_file = home / ".ray" / "auth_token"
        assert generated.returncode == 0 and token_file.is_file(), generated.stderr[-2000:]
        token_file.chmod(0o600)
        env = _client_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), WANDB_MODE="disabled")
        gcs, dashboard, client, agent = _free_ports(4)
        log = root / "head.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [RAY_CLI, "start", "--head", "--block", "--port", str(gcs),
                 "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
                 # fixed defaults (10001, 52365) would clash with another Ray on this machine
                 "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
                 "--num-cpus", "2", "--object-store-memory", str(200 * 2**20),
                 "--temp-dir", str(root / "ray"), "--disable-usage-stats"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
            )
        head = Head(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", dashboard, env, root)
        _wait_ready(head, proc, log)
        yield head
    finally:
        _stop_head(proc, root)
        shutil.rmtree(root, ignore_errors=True)


def _listening_addresses(port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses of the TCP sockets listening on port, from /proc/net/tcp{,6}."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, width, 8))
            found.append(ipaddress.ip_address(raw))
    return found


def _is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def test_clients_without_the_token_are_refused(token_head):
    head = token_head
    listed = _ray(["job", "list", "--address", head.dashboard], head.env)
    assert listed.returncode == 0, listed.stderr[-2000:]

    nobody = head.root / "nobody"  # a HOME with no ~/.ray/auth_token in it
    nobody.mkdir(exist_ok=True)
    anonymous = _client_env(HOME=str(nobody))
    wrong = _client_env(HOME=str(nobody), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    marker = f"should-not-run-{uuid.uuid4().hex[:8]}"
    for env in (anonymous, wrong):
        # the job API: submitting a job is running code on the cluster
        refused = _ray(["job", "submit", "--address", head.dashboard, "--no-wait", "--", "echo", marker], env)
        assert refused.returncode != 0
        assert "AuthenticationError" in refused.stdout + refused.stderr
        # the GCS: what a driver or a joining node connects to first
        probe = f"import ray; ray.init(address={head.gcs!r}, log_to_driver=False); print('CONNECTED')"
        connect = subprocess.run([sys.executable, "-c", probe], env=env | {"RAY_gcs_server_port_wait_time_s": "2"},
                                 capture_output=True, text=True, timeout=90)
        assert connect.returncode != 0 and "CONNECTED" not in connect.stdout
        assert "InvalidAuthToken" in connect.stdout + connect.stderr
    jobs = _ray(["job", "list", "--address", head.dashboard], head.env)
    assert jobs.returncode == 0 and marker not in jobs.stdout + jobs.stderr

    addresses = _listening_addresses(head.dashboard_port)
    assert addresses and all(_is_loopback(a) for a in addresses), addresses


def test_ray_job_submit_trains_a_tiny_run(token_head):
    head = token_head
    logdir = head.root / "run"
    submission = f"hr-deploy-{uuid.uuid4().hex[:8]}"
    # The README's idempotent entrypoint: resume the directory if it holds a run, else train. It
    # goes through two shells (the CLI's list2cmdline, then the job's `sh -c`), as on a cluster.
    train = shlex.join([HARMONYRAY, "train", "--config", "cartpole", "--logdir", str(logdir), "--no-progress", "ray.address=auto", *TINY])
    entrypoint = f"test -f {logdir}/config.yaml && exec {HARMONYRAY} resume {logdir} --no-progress || exec {train}"
    command = ["job", "submit", "--address", head.dashboard, "--submission-id", submission,
               "--runtime-env-json", json.dumps({"working_dir": "."}), "--", "bash", "-c", entrypoint]
    try:
        submitted = _ray(command, head.env, timeout=150)
    except subprocess.TimeoutExpired:
        logs = _ray(["job", "logs", "--address", head.dashboard, submission], head.env).stdout
        _ray(["job", "stop", "--address", head.dashboard, submission], head.env)
        pytest.fail(f"the job did not finish within 150 s:\n{logs[-3000:]}")
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, output[-4000:]
    status = _ray(["job", "status", "--address", head.dashboard, submission], head.env)
    assert f"Job '{submission}' succeeded" in status.stdout + status.stderr

    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert rows and all("step" in row for row in rows)
    assert max(row["step"] for row in rows) >= 500
    saved = yaml.safe_load((logdir / "config.yaml").read_text())
    assert saved["ray"]["address"] == "auto"
    assert any((logdir / "checkpoints").iterdir())


def test_a_node_without_a_token_does_not_start():
    """What RAY_AUTH_MODE=token in the images and manifests buys: a node that got no token fails
    to start instead of running an open cluster."""
    root = Path(tempfile.mkdtemp(prefix="hr-deploy-"))
    proc = None
    try:
        (root / "home").mkdir()
        env = _client_env(HOME=str(root / "home"), RAY_AUTH_MODE="token")
        gcs, dashboard, client, agent = _free_ports(4)
        proc = subprocess.Popen(
            [RAY_CLI, "start", "--head", "--block", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client),
             "--dashboard-agent-listen-port", str(agent), "--num-cpus", "1",
             "--temp-dir", str(root / "ray"), "--disable-usage-stats"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=root,
        )
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("ray start with token auth but no token kept running")
        assert proc.returncode != 0
        assert "AuthenticationError" in output and "no authentication token was found" in output
    finally:
        _stop_head(proc, root)
        shutil.rmtree(root, ignore_errors=True)
