"""cloud-hypervisor cannot run on the development machines (it needs a real KVM), so its side is tested
against its published contract. The project keeps the part of cloud-hypervisor v53.0's OpenAPI document it
uses in tests/hypervisor/ch_api_subset.json (closed objects: exactly the fields slurm-vm sends), and:

- every VmConfig slurm-vm would PUT to /vm.create validates against the subset, and every field of the
  subset is sent by some VM shape (so the subset stays exactly what is sent);
- every request the API client sends uses a path and method of the subset, checked with a real HTTP server
  on a unix socket that refuses anything else;
- where the full published spec is available (../shared/reference/, or $SLURM_VM_CH_SPEC), the subset is
  checked against it: every path, method, schema, property, type and enum value exists there, and every
  property the spec requires in a request is in the subset.
"""

from __future__ import annotations

import http.server
import json
import os
import socketserver
import threading

import pytest
import yaml

from slurm_vm.errors import HypervisorError
from slurm_vm.launcher.cloud_hypervisor import CloudHypervisorAPI, ch_argv, ch_vm_config
from tests.hypervisor.shapes import SHAPES, definition

jsonschema = pytest.importorskip("jsonschema")
HERE = os.path.dirname(os.path.abspath(__file__))
SUBSET_PATH = os.path.join(HERE, "ch_api_subset.json")
FULL_SPEC_PATHS = (os.path.join(HERE, "..", "..", "..", "shared", "reference", "cloud-hypervisor-v53.0-api.yaml"),)


def load_subset() -> dict:
    with open(SUBSET_PATH) as fh:
        return json.load(fh)


def load_full_spec() -> dict:
    for path in (os.environ.get("SLURM_VM_CH_SPEC", ""), *FULL_SPEC_PATHS):
        if path and os.path.exists(path):
            with open(path) as fh:
                return yaml.safe_load(fh)
    pytest.skip("cloud-hypervisor's full API spec is not available (set SLURM_VM_CH_SPEC); the subset tests ran")


@pytest.fixture(scope="module")
def subset():
    return load_subset()


@pytest.fixture(scope="module")
def vmconfig_validator(subset):
    schema = {"$ref": "#/components/schemas/VmConfig", "components": subset["components"]}
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("name", [n for n in SHAPES])
def test_vm_config_validates_against_the_subset(vmconfig_validator, name):
    defn = SHAPES[name]
    config = ch_vm_config(defn, list(range(defn.cpus)))
    errors = sorted(vmconfig_validator.iter_errors(config), key=lambda e: list(e.path))
    assert errors == [], [f"{list(e.path)}: {e.message}" for e in errors]
    assert config["cpus"]["boot_vcpus"] == defn.cpus
    assert [a["host_cpus"] for a in config["cpus"]["affinity"]] == [[c] for c in range(defn.cpus)]


def _ref_name(schema: dict) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[1] if ref else None


def _fields_sent(value: object, schema: dict, schemas: dict, used: set) -> None:
    name = _ref_name(schema)
    if name:
        schema = schemas[name]
    if isinstance(value, dict):
        for key, item in value.items():
            used.add((name, key))
            _fields_sent(item, schema["properties"][key], schemas, used)
    elif isinstance(value, list):
        for item in value:
            _fields_sent(item, schema["items"], schemas, used)


def _request_fields(schemas: dict, name: str, out: set) -> set:
    for key, prop in schemas[name].get("properties", {}).items():
        out.add((name, key))
        for target in (_ref_name(prop), _ref_name(prop.get("items", {}))):
            if target and "properties" in schemas[target]:
                _request_fields(schemas, target, out)
    return out


def test_the_subset_is_exactly_what_is_sent(subset):
    schemas = subset["components"]["schemas"]
    used: set = set()
    for defn in SHAPES.values():
        try:
            _fields_sent(ch_vm_config(defn, list(range(defn.cpus))), {"$ref": "#/x/VmConfig"}, schemas, used)
        except HypervisorError:
            continue   # macvtap shapes are command-line only
    assert _request_fields(schemas, "VmConfig", set()) - used == set()


def test_the_subset_validator_catches_mistakes(vmconfig_validator):
    config = ch_vm_config(definition(), [0])
    config["cpus"]["boot_cpus"] = 1
    assert list(vmconfig_validator.iter_errors(config))
    config = ch_vm_config(definition(), [0])
    config["disks"][0]["image_type"] = "qcow2"
    assert list(vmconfig_validator.iter_errors(config))
    config = ch_vm_config(definition(), [0])
    del config["payload"]
    assert list(vmconfig_validator.iter_errors(config))


def _compatible(sub: dict, full: dict, full_schemas: dict, where: str) -> list[str]:
    if "$ref" in sub:
        return [] if _ref_name(sub) == _ref_name(full) else [f"{where}: refers to {_ref_name(sub)}, the spec to "
                                                             f"{_ref_name(full) or full.get('type')}"]
    if sub.get("type") == "object" and "properties" not in sub:
        target = full_schemas.get(_ref_name(full) or "", full)
        return [] if target.get("type") == "object" else [f"{where}: not an object in the spec"]
    problems = []
    if sub.get("type") != full.get("type"):
        problems.append(f"{where}: type {sub.get('type')}, the spec says {full.get('type')}")
    if "enum" in sub and not set(sub["enum"]) <= set(full.get("enum", ())):
        problems.append(f"{where}: enum values {sorted(set(sub['enum']) - set(full.get('enum', ())))} not in the spec")
    if "items" in sub:
        problems += _compatible(sub["items"], full.get("items", {}), full_schemas, where + "[]")
    return problems


def subset_problems(subset: dict, full: dict) -> list[str]:
    full_schemas = full["components"]["schemas"]
    problems = []
    requests = set()
    for endpoint, methods in subset["paths"].items():
        for method, op in methods.items():
            full_op = full["paths"].get(endpoint, {}).get(method)
            if full_op is None:
                problems.append(f"{method.upper()} {endpoint}: not in the spec")
                continue
            missing = set(op["responses"]) - {str(c) for c in full_op["responses"]}
            if missing:
                problems.append(f"{method.upper()} {endpoint}: responses {sorted(missing)} not in the spec")
            if "request_schema" in op:
                body = full_op.get("requestBody", {}).get("content", {}).get("application/json", {})
                if _ref_name(body.get("schema", {})) != op["request_schema"]:
                    problems.append(f"{method.upper()} {endpoint}: the spec's body is not {op['request_schema']}")
                requests |= {name for name, _ in _request_fields(subset["components"]["schemas"],
                                                                  op["request_schema"], set())}
    for name, schema in subset["components"]["schemas"].items():
        if name not in full_schemas:
            problems.append(f"schema {name}: not in the spec")
            continue
        spec_schema = full_schemas[name]
        problems += _compatible({k: v for k, v in schema.items() if k != "properties"},
                                {k: v for k, v in spec_schema.items() if k != "properties"}, full_schemas, name) \
            if "properties" not in schema else []
        for key, prop in schema.get("properties", {}).items():
            if key not in spec_schema.get("properties", {}):
                problems.append(f"{name}.{key}: not in the spec")
                continue
            problems += _compatible(prop, spec_schema["properties"][key], full_schemas, f"{name}.{key}")
        required, spec_required = set(schema.get("required", ())), set(spec_schema.get("required", ()))
        if name in requests and not spec_required <= required:
            problems.append(f"{name}: the spec requires {sorted(spec_required - required)}")
        if name not in requests and not required <= spec_required:
            problems.append(f"{name}: relies on {sorted(required - spec_required)}, which the spec does not promise")
    return problems


def test_subset_agrees_with_the_published_spec(subset):
    assert subset_problems(subset, load_full_spec()) == []


def test_the_spec_comparison_finds_mistakes(subset):
    full = load_full_spec()
    wrong = json.loads(json.dumps(subset))
    schemas = wrong["components"]["schemas"]
    schemas["CpusConfig"]["properties"]["boot_cpus"] = {"type": "integer"}
    schemas["ImageType"]["enum"].append("qcow2")
    schemas["CpusConfig"]["required"] = ["boot_vcpus"]
    wrong["paths"]["/vm.reboot-now"] = {"put": {"responses": ["204"]}}
    assert sorted(subset_problems(wrong, full)) == [
        "CpusConfig.boot_cpus: not in the spec", "CpusConfig: the spec requires ['max_vcpus']",
        "ImageType: enum values ['qcow2'] not in the spec", "PUT /vm.reboot-now: not in the spec"]


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


def test_api_client_speaks_the_subset_paths(subset, tmp_path):
    seen: list = []
    sock = str(tmp_path / "api.sock")
    server = SpecServer(sock, make_handler(subset, seen))
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
    info_schema = subset["components"]["schemas"]["VmInfo"]
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
