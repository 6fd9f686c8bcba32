"""cloud-hypervisor checkpoints, tested against the published contract (cloud-hypervisor needs a real KVM and
does not run here; see docs/checkpoint.md). What is checked:

- the bodies sent (VmSnapshotConfig of PUT /vm.snapshot) and the options of `--restore` that the REST
  RestoreConfig shares validate against the project's subset (tests/hypervisor/ch_api_subset.json), which
  test_cloud_hypervisor_contract.test_subset_agrees_with_the_published_spec checks against the v53 spec;
  `net_fds` (command line only in v53) follows the syntax v53 documents;
- the config.json fields that retarget_config() rewrites are VmConfig fields of the subset, with valid values;
- CONTRACT TESTS OF THE REQUEST SEQUENCE ONLY (test_contract_sequence_*): a fake API server on a unix socket
  that serves the subset's paths, validates each body and emulates what the v53 API promises (vm.snapshot
  writes config.json, state.json and memory-ranges; vmm.shutdown ends the VMM process). They check the
  order slurm-vm sends: pause before snapshot, vmm.shutdown after it, the manifest written last, a failed
  snapshot followed by resume and no manifest; on restore, vm.resume only once vm.info says Paused. They do
  not show that cloud-hypervisor restores a guest: nothing here can.
"""

from __future__ import annotations

import http.server
import json
import os
import socketserver
import subprocess
import threading
from dataclasses import replace

import pytest

from slurm_vm.launcher.ch_restore import RestoringCloudHypervisorRuntime, restore_option, retarget_config
from slurm_vm.checkpoint.control import CheckpointControl
from slurm_vm.checkpoint.manifest import MANIFEST_NAME, CheckpointRefused, read_manifest
from slurm_vm.hypervisor.checkpoint_settings import CheckpointSettings
from slurm_vm.checkpoint.store import Found, job_dir
from slurm_vm.launcher.cloud_hypervisor import CloudHypervisorRuntime, snapshot_config
from tests.checkpoint.ch_fixtures import saved_config
from tests.hypervisor.shapes import SHAPES, definition
from tests.hypervisor.test_cloud_hypervisor_contract import load_subset

jsonschema = pytest.importorskip("jsonschema")


def entries(jdir: str) -> list[str]:
    """A job's checkpoint dir without its save lock (`.saving`)."""
    return sorted(n for n in os.listdir(jdir) if not n.startswith("."))


@pytest.fixture(scope="module")
def subset():
    return load_subset()


def validator(subset: dict, name: str):
    return jsonschema.Draft7Validator({"$ref": f"#/components/schemas/{name}", "components": subset["components"]})


def errors(subset: dict, name: str, body: object) -> list[str]:
    return [f"{list(e.path)}: {e.message}" for e in validator(subset, name).iter_errors(body)]


def test_snapshot_body_validates(subset):
    body = snapshot_config("/scratch/alice/job-42/ckpt-000001")
    assert body == {"destination_url": "file:///scratch/alice/job-42/ckpt-000001"}
    assert errors(subset, "VmSnapshotConfig", body) == []
    assert errors(subset, "VmSnapshotConfig", {"destination": "file:///x"})      # the validator catches mistakes


def split_options(option: str) -> dict[str, str]:
    """cloud-hypervisor's option syntax: key=value pairs split on commas outside brackets."""
    out, depth, start = {}, 0, 0
    for i, ch in enumerate(option + ","):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            key, _, value = option[start:i].partition("=")
            out[key] = value
            start = i + 1
    return out


def test_restore_option_validates_and_net_fds_follow_the_v53_syntax(subset):
    options = split_options(restore_option("/var/lib/slurm-vm/jobs/42/restore", [7, 8]))
    # v53's --restore: "source_url=<source_url>,prefault=on|off,memory_restore_mode=copy|ondemand,
    # net_fds=<list_of_net_ids_with_their_associated_fds>,resume=true|false", net_fds e.g. [net1@[23,24]]
    assert set(options) == {"source_url", "net_fds"}
    assert options["net_fds"] == "[net0@[7],net1@[8]]"
    rest = {k: v for k, v in options.items() if k != "net_fds"}
    assert errors(subset, "RestoreConfig", rest) == []
    assert errors(subset, "RestoreConfig", {"source_url": "/no/scheme"})


EDITED = {("cpus", "affinity"), ("disks", "path"), ("serial", "socket"), ("payload", "kernel"),
          ("payload", "initramfs"), ("payload", "firmware")}


def project(value: object, schema: dict, schemas: dict) -> object:
    """The part of a config.json the subset describes (the subset's objects are closed, config.json is not)."""
    if "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    if isinstance(value, dict) and "properties" in schema:
        return {k: project(v, schema["properties"][k], schemas) for k, v in value.items()
                if k in schema["properties"] and v is not None}
    if isinstance(value, list) and "items" in schema:
        return [project(v, schema["items"], schemas) for v in value]
    return value


@pytest.mark.parametrize("name", [n for n in SHAPES if n != "shares"])
def test_retargeted_config_fields_are_subset_vmconfig_fields(subset, name):
    defn = SHAPES[name]
    config = retarget_config(saved_config(defn, list(range(10, 10 + defn.cpus))), defn, list(range(defn.cpus)))
    schemas = subset["components"]["schemas"]
    for section, key in EDITED:
        target = schemas[schemas["VmConfig"]["properties"][section].get("$ref", "#/x/" + section).rsplit("/", 1)[1]] \
            if section != "disks" else schemas["DiskConfig"]
        assert key in target["properties"], f"{section}.{key} is not in the subset"
    projected = project(config, {"$ref": "#/components/schemas/VmConfig"}, schemas)
    assert errors(subset, "VmConfig", projected) == []
    assert projected["cpus"]["affinity"] == [{"vcpu": i, "host_cpus": [i]} for i in range(defn.cpus)]


# -- CONTRACT TESTS OF THE REQUEST SEQUENCE (a fake API server; not cloud-hypervisor) -------------------------

class FakeServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class FakeVmm:
    """Serves the subset's paths on the API socket the way the v53 spec describes them."""

    def __init__(self, subset: dict, sock: str, vmm_proc: subprocess.Popen, fail: str = "",
                 states: tuple[str, ...] = ("Running",)):
        self.subset, self.proc, self.fail, self.states = subset, vmm_proc, fail, list(states)
        self.seen: list[tuple[str, str]] = []
        self.checkpoint_dir: str | None = None
        self.listing_at: dict[str, list[str]] = {}
        self.server = FakeServer(sock, self.handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, method: str, endpoint: str, body: object) -> tuple[int, object]:
        op = self.subset["paths"].get(endpoint, {}).get(method.lower())
        if op is None:
            return 405, None
        if "request_schema" in op and errors(self.subset, op["request_schema"], body):
            return 400, None
        if self.checkpoint_dir:
            self.listing_at.setdefault(endpoint, sorted(os.listdir(self.checkpoint_dir)))
        if endpoint == self.fail:
            return 500, None
        if endpoint == "/vm.snapshot":
            self.checkpoint_dir = body["destination_url"][len("file://"):]
            for name, data in (("config.json", b'{"cpus": {}}'), ("state.json", b"{}"),
                               ("memory-ranges", b"\0" * 8192)):
                with open(os.path.join(self.checkpoint_dir, name), "wb") as fh:
                    fh.write(data)
        if endpoint == "/vmm.shutdown":
            self.proc.terminate()
            self.proc.wait()
        if endpoint == "/vmm.ping":
            return 200, {"version": "53.0.0", "build_version": "v53.0", "pid": self.proc.pid}
        if endpoint == "/vm.info":
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return (500, None) if state is None else (200, {"config": {}, "state": state})
        return 204, None

    def handler(self):
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                endpoint = self.path.split("?")[0][len("/api/v1"):]
                fake.seen.append((method, endpoint))
                code, answer = fake.answer(method, endpoint, body)
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except BrokenPipeError:
                    pass        # the client gave up (the launcher's hard stop after the VMM already ended)

            def do_GET(self):
                self._serve("GET")

            def do_PUT(self):
                self._serve("PUT")

            def log_message(self, *args):
                pass

        return Handler


def checkpointing(tmp_path) -> tuple:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    defn = definition(run_dir=str(run_dir))
    with open(defn.disks[0].path, "wb") as fh:
        fh.write(b"QFI\xfb overlay")
    settings = CheckpointSettings(user_dir=str(tmp_path / "ckpt" / "alice"), keep=1, compress=True,
                                  on_preempt="checkpoint", on_timeout="checkpoint", on_restore_failure="fail",
                                  restart_count=0, user="alice", image="tiny", base_image="/img/base.qcow2",
                                  instance_id="i-42", scontrol="/bin/false")
    return replace(defn, checkpoint=settings), settings


@pytest.fixture
def vmm_proc():
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def saving(defn, vmm_proc) -> tuple[CheckpointControl, CloudHypervisorRuntime]:
    runtime = CloudHypervisorRuntime(defn, "kvm", [0])
    runtime.proc = vmm_proc
    control = CheckpointControl(defn)
    control.trigger = "timeout"
    return control, runtime


def test_contract_sequence_save_pauses_snapshots_ends_the_vmm_then_writes_the_manifest(subset, tmp_path, vmm_proc):
    defn, settings = checkpointing(tmp_path)
    fake = FakeVmm(subset, defn.path("api.sock"), vmm_proc)
    try:
        control, runtime = saving(defn, vmm_proc)
        assert control.save_and_end(runtime) == 8
    finally:
        fake.close()
    assert fake.seen[:4] == [("PUT", "/vm.pause"), ("GET", "/vmm.ping"), ("PUT", "/vm.snapshot"),
                             ("PUT", "/vmm.shutdown")]
    assert ("PUT", "/vm.resume") not in fake.seen
    assert fake.listing_at["/vmm.shutdown"] == ["config.json", "memory-ranges", "state.json"]  # no overlay yet
    (path,) = [os.path.join(job_dir(settings.user_dir, 42), n) for n in entries(job_dir(settings.user_dir, 42))]
    manifest = read_manifest(path, os.getuid())
    assert [e.name for e in manifest.states] == ["config.json", "memory-ranges", "state.json"]
    assert manifest.vmm == "cloud-hypervisor" and manifest.vmm_version == "v53.0"
    assert manifest.compressed is False and manifest.overlay.size == 12
    assert sorted(os.listdir(path)) == ["config.json", MANIFEST_NAME, "memory-ranges", "overlay.qcow2",
                                        "state.json"]


def test_contract_sequence_failed_snapshot_resumes_and_writes_no_manifest(subset, tmp_path, vmm_proc):
    defn, settings = checkpointing(tmp_path)
    fake = FakeVmm(subset, defn.path("api.sock"), vmm_proc, fail="/vm.snapshot")
    try:
        control, runtime = saving(defn, vmm_proc)
        assert control.save_and_end(runtime) is None          # the launcher then shuts the guest down
    finally:
        fake.close()
    assert fake.seen == [("PUT", "/vm.pause"), ("GET", "/vmm.ping"), ("PUT", "/vm.snapshot"), ("PUT", "/vm.resume")]
    jdir = job_dir(settings.user_dir, 42)
    assert all(MANIFEST_NAME not in os.listdir(os.path.join(jdir, n)) for n in entries(jdir))
    assert vmm_proc.poll() is None


def restoring(tmp_path, vmm_proc) -> RestoringCloudHypervisorRuntime:
    defn, _ = checkpointing(tmp_path)
    found = Found(str(tmp_path / "ckpt"), None)  # type: ignore[arg-type]
    runtime = RestoringCloudHypervisorRuntime(defn, "kvm", [0], found)
    runtime.proc = vmm_proc
    runtime.restore_dir = defn.path("restore")
    os.mkdir(runtime.restore_dir)
    return runtime


def test_contract_sequence_restore_resumes_once_the_vm_is_paused(subset, tmp_path, vmm_proc):
    runtime = restoring(tmp_path, vmm_proc)
    runtime.found = Found(runtime.found.path, type("M", (), {"job_id": 42, "restart_count": 0, "reason": "preempt"}))
    fake = FakeVmm(subset, runtime.defn.path("api.sock"), vmm_proc, states=(None, "Created", "Paused"))
    try:
        runtime.after_start(__import__("time").monotonic() + 30)
    finally:
        fake.close()
    assert fake.seen == [("GET", "/vmm.ping"), ("GET", "/vm.info"), ("GET", "/vm.info"), ("GET", "/vm.info"),
                         ("PUT", "/vm.resume")]
    assert not os.path.exists(runtime.defn.path("restore"))


def test_contract_sequence_restore_failure_is_a_refused_checkpoint(subset, tmp_path, vmm_proc):
    runtime = restoring(tmp_path, vmm_proc)
    fake = FakeVmm(subset, runtime.defn.path("api.sock"), vmm_proc, states=(None,))
    try:
        vmm_proc.terminate()
        vmm_proc.wait()
        with pytest.raises(CheckpointRefused, match="could not restore the snapshot"):
            runtime.after_start(__import__("time").monotonic() + 30)
    finally:
        fake.close()
    assert ("PUT", "/vm.resume") not in fake.seen


def test_a_different_cloud_hypervisor_version_is_refused_before_starting(tmp_path):
    script = tmp_path / "cloud-hypervisor"
    script.write_text("#!/bin/sh\necho cloud-hypervisor v52.0\n")
    script.chmod(0o755)
    defn, _ = checkpointing(tmp_path)
    defn = replace(defn, cloud_hypervisor_binary=str(script))
    manifest = type("M", (), {"vmm": "cloud-hypervisor", "vmm_version": "v53.0"})
    runtime = RestoringCloudHypervisorRuntime(defn, "kvm", [0], Found(str(tmp_path), manifest))  # type: ignore
    with pytest.raises(CheckpointRefused, match="saved by cloud-hypervisor v53.0, this node runs cloud-hypervisor v52.0"):
        runtime.start([], str(tmp_path / "log"))
    assert runtime.proc is None and not os.path.exists(defn.path("restore"))
