"""cloud-hypervisor cannot run on the development machines (it needs a real KVM), so its side is tested
against its published contract: the v53.0 OpenAPI spec in shared/reference/, and its documented CLI syntax.

- every VmConfig slurm-vm would PUT to /vm.create validates against the spec's VmConfig schema, made
  strict (unknown properties are errors, so a misspelt key cannot pass);
- every request the API client sends uses a path and method the spec defines, checked with a real HTTP
  server on a unix socket that refuses anything else, and answers with bodies shaped by the spec.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import socketserver
import threading

import pytest
import yaml

from slurm_vm.errors import HypervisorError
from slurm_vm.hypervisor.cloud_hypervisor import CloudHypervisorAPI, ch_argv, ch_vm_config
from tests.hypervisor.shapes import SHAPES, definition

jsonschema = pytest.importorskip("jsonschema")
SPEC_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "reference",
                         "cloud-hypervisor-v53.0-api.yaml")


def load_spec() -> dict:
    for path in (SPEC_PATH, os.environ.get("SLURM_VM_CH_SPEC", "")):
        if path and os.path.exists(path):
            with open(path) as fh:
                return yaml.safe_load(fh)
    pytest.skip("cloud-hypervisor's API spec (shared/reference/) is not beside the checkout")


def strict(schema: object) -> object:
    """Every object schema with properties refuses properties it does not name."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def api_spec():
    return load_spec()


@pytest.fixture(scope="module")
def vmconfig_validator(api_spec):
    components = strict(copy.deepcopy(api_spec["components"]))
    schema = {"$ref": "#/components/schemas/VmConfig", "components": components}
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("name", [n for n in SHAPES])
def test_vm_config_validates_against_the_published_schema(vmconfig_validator, name):
    defn = SHAPES[name]
    config = ch_vm_config(defn, list(range(defn.cpus)))
    errors = sorted(vmconfig_validator.iter_errors(config), key=lambda e: list(e.path))
    assert errors == [], [f"{list(e.path)}: {e.message}" for e in errors]
    assert config["cpus"]["boot_vcpus"] == defn.cpus
    assert [a["host_cpus"] for a in config["cpus"]["affinity"]] == [[c] for c in range(defn.cpus)]


def test_the_strict_validator_catches_mistakes(vmconfig_validator):
    config = ch_vm_config(definition(), [0])
    config["cpus"]["boot_cpus"] = 1
    assert list(vmconfig_validator.iter_errors(config))
    config = ch_vm_config(definition(), [0])
    config["disks"][0]["image_type"] = "qcow2"
    assert list(vmconfig_validator.iter_errors(config))


def test_macvtap_nics_are_refused_in_a_rest_config():
    with pytest.raises(HypervisorError, match="macvtap"):
        ch_vm_config(definition(nics=2, macvtap=True), [0])


def test_command_line_follows_the_documented_syntax():
    defn = definition(cpus=2, nics=2, volumes=1)
    argv = ch_argv(defn, [4, 5], [7, 8])
    opts = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")}
    assert opts["--cpus"] == "boot=2,affinity=[0@[4],1@[5]]"
    assert opts["--memory"] == "size=1024M"
    assert opts["--console"] == "off"
    assert opts["--serial"] == "socket=/var/lib/slurm-vm/jobs/42/serial-vmm.sock"
    assert opts["--api-socket"] == "path=/var/lib/slurm-vm/jobs/42/api.sock"
    assert opts["--kernel"] == "/img/vmlinux" and opts["--initramfs"] == "/img/initrd.gz"
    disks = argv[argv.index("--disk") + 1:argv.index("--net")]
    assert disks[0] == "path=/var/lib/slurm-vm/jobs/42/overlay.qcow2,readonly=off,id=disk0,image_type=qcow2," \
                       "backing_files=on"
    assert disks[1].startswith("path=/var/lib/slurm-vm/jobs/42/seed.iso,readonly=on")
    nets = argv[argv.index("--net") + 1:]
    assert nets == ["fd=[7],mac=02:00:00:00:00:00,id=net0", "fd=[8],mac=02:00:00:00:00:01,id=net1"]
    firmware = ch_argv(definition(boot=SHAPES["firmware"].boot), [0], [3])
    assert "--firmware" in firmware and "--kernel" not in firmware


class SpecServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def make_handler(spec: dict, seen: list):
    class Handler(http.server.BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            path = self.path.split("?")[0]
            assert path.startswith("/api/v1/")
            endpoint = path[len("/api/v1"):]
            operation = spec["paths"].get(endpoint, {}).get(method.lower())
            seen.append((method, endpoint, operation is not None))
            if operation is None:
                self.send_response(405)
                self.end_headers()
                return
            body = b""
            if endpoint == "/vmm.ping":
                body = json.dumps({"version": "v53.0", "pid": 1}).encode()
            elif endpoint == "/vm.info":
                body = json.dumps({"config": {"payload": {}}, "state": "Running"}).encode()
            codes = [int(c) for c in operation["responses"] if str(c).isdigit()]
            self.send_response(200 if body else min(c for c in codes if c < 300))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._serve("GET")

        def do_PUT(self):
            self._serve("PUT")

        def log_message(self, *args):
            pass

    return Handler


def test_api_client_speaks_the_published_paths(api_spec, tmp_path):
    seen: list = []
    sock = str(tmp_path / "api.sock")
    server = SpecServer(sock, make_handler(api_spec, seen))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        api = CloudHypervisorAPI(sock)
        assert api.ping()["version"] == "v53.0"
        assert api.info()["state"] == "Running"
        api.power_button()
        api.shutdown()
        api.shutdown_vmm()
        api.close()
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("GET", "/vmm.ping", True), ("GET", "/vm.info", True), ("PUT", "/vm.power-button", True),
                    ("PUT", "/vm.shutdown", True), ("PUT", "/vmm.shutdown", True)]
    info_schema = api_spec["components"]["schemas"]["VmInfo"]
    assert set(info_schema["required"]) == {"config", "state"}


def test_api_client_reports_http_errors_in_one_line(tmp_path):
    seen: list = []
    sock = str(tmp_path / "api.sock")
    server = SpecServer(sock, make_handler({"paths": {}}, seen))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = CloudHypervisorAPI(sock)
        with pytest.raises(HypervisorError, match="HTTP 405"):
            api.power_button()
        api.close()
    finally:
        server.shutdown()
        server.server_close()
