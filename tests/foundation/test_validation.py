"""Validation of the user's spec and the admin's config: every mistake is one line naming its field."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slurm_vm.config import parse_config
from slurm_vm.errors import ValidationError
from slurm_vm.spec import check_user_access, parse_spec

CONFIG = """
images:
  deb: {path: /img/deb.qcow2, firmware: /img/OVMF.fd}
  tiny: {path: /img/t.qcow2, kernel: /img/vmlinux, initrd: /img/i.gz, cmdline: "console=ttyS0"}
networks:
  lan: {kind: bridge, bridge: br0}
  staff: {kind: bridge, bridge: br1, allowed_users: [root]}
  priv: {kind: vxlan, parent: eth0, vni_range: [100, 199], subnet: 10.1.0.0/24}
  small: {kind: vxlan, parent: eth0, vni_range: [100, 199], subnet: 10.2.0.0/29}
  shared: {kind: bridge, bridge: br2, subnet: 10.3.0.0/24, address_range: [10.3.0.100, 10.3.0.109]}
limits: {max_cpus: 16, max_memory: 64G, max_disk: 500G, max_user_data: 4K}
"""
OK = "name: web\nimage: deb\n"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqZrH0kXH3kq7mJ8CwLrDkYbI6RmDsZ4bq2m3M8kN7c a@b"


@pytest.fixture(scope="module")
def config():
    return parse_config(CONFIG, "config.yaml")


BAD_SPECS = [
    ("image: deb\n", "name"),
    ("name: web\n", "image"),
    ("name: Web\nimage: deb\n", "name"),
    ("name: a/b\nimage: deb\n", "name"),
    ("name: ..\nimage: deb\n", "name"),
    ("name: -web\nimage: deb\n", "name"),
    ("name: " + "a" * 40 + "\nimage: deb\n", "name"),
    ("name: 12\nimage: deb\n", "name"),
    (OK + "cpu: 2\n", "cpu"),
    (OK + "cpus: 0\n", "cpus"),
    (OK + "cpus: -3\n", "cpus"),
    (OK + "cpus: 2.5\n", "cpus"),
    (OK + "cpus: '2'\n", "cpus"),
    (OK + "cpus: true\n", "cpus"),
    (OK + "cpus: 64\n", "cpus"),
    (OK + "memory: -1G\n", "memory"),
    (OK + "memory: 1X\n", "memory"),
    (OK + "memory: 1M\n", "memory"),
    (OK + "memory: 999T\n", "memory"),
    (OK + "memory: [1G]\n", "memory"),
    (OK + "disk: 0\n", "disk"),
    (OK + "disk: 2T\n", "disk"),
    ("name: web\nimage: nope\n", "image"),
    ("name: web\nimage: ../deb\n", "image"),
    ("name: web\nimage: /img/deb.qcow2\n", "image"),
    (OK + "networks: lan\n", "networks"),
    (OK + "networks: [{net: lan}]\n", "networks[0].net"),
    (OK + "networks: [{network: wan}]\n", "networks[0].network"),
    (OK + "networks: [{network: lan, mac: '01:00:00:00:00:01'}]\n", "networks[0].mac"),
    (OK + "networks: [{network: lan, mac: '00:00:00:00:00:00'}]\n", "networks[0].mac"),
    (OK + "networks: [{network: lan, mac: 'nonsense'}]\n", "networks[0].mac"),
    (OK + "networks: [{network: lan, mac: '52:54:00:00:00:01'}, {network: lan, mac: '52:54:00:00:00:01'}]\n",
     "networks[1].mac"),
    (OK + "networks: [{network: lan, mac: '02:00:00:00:40:01'}]\n", "networks[0].mac"),   # slurm-vm's own MACs
    (OK + "networks: [{network: lan, address: 10.0.0.300/24}]\n", "networks[0].address"),
    (OK + "networks: [{network: lan, gateway: 10.0.0.1}]\n", "networks[0].gateway"),
    (OK + "networks:\n" + "".join("  - {network: lan}\n" for _ in range(9)), "networks"),
    (OK + "cloud_init: {user_data: \"#!/bin/sh\\n\\uD800\"}\n", "cloud_init.user_data"),   # issue 20: drained
    (OK + "cloud_init: {network_config: {\"\\uDC00\": 1}}\n", "cloud_init.network_config"),
    (OK + "cloud_init: {network_config: {version: 2, a: [\"\\uDFFF\"]}}\n", "cloud_init.network_config.a[0]"),
    (OK + "volumes: [{path: data.img}]\n", "volumes[0].path"),
    (OK + "volumes: [{path: /data/../etc/shadow}]\n", "volumes[0].path"),
    (OK + "volumes: [{path: /data//x}]\n", "volumes[0].path"),
    (OK + "volumes: [{path: /data/x, readonly: yes please}]\n", "volumes[0].readonly"),
    (OK + "volumes: [{path: /d/x}, {path: /d/x}]\n", "volumes[1].path"),
    (OK + "hypervisor: xen\n", "hypervisor"),
    (OK + "time: forever\n", "time"),
    (OK + "time: 0\n", "time"),
    (OK + "count: 0\n", "count"),
    (OK + "count: 3\nnetworks: [{network: priv, mac: '52:54:00:00:00:01'}]\n", "networks[0].mac"),
    (OK + "count: 2\nvolumes: [{path: /d/x}]\n", "volumes[0].readonly"),
    (OK + "count: 7\nnetworks: [{network: small}]\n", "count"),          # /29: 6 hosts
    (OK + "count: 11\nnetworks: [{network: shared}]\n", "count"),        # range of 10
    (OK + "count: 2049\n", "count"),                                      # derive_mac's VM index
    (OK + "networks: [{network: shared, address: 10.3.0.105/24}]\n", "networks[0].address"),   # in the range
    (OK + "networks: [{network: shared, address: 10.4.0.5/24}]\n", "networks[0].address"),     # other subnet
    (OK + "networks: [{network: shared, address: 10.3.0.255/24}]\n", "networks[0].address"),   # broadcast
    (OK + "networks: [{network: shared, address: 10.3.0.5/16}]\n", "networks[0].address"),     # prefix
    (OK + "networks: [{network: priv, address: 10.9.0.5/24}]\n", "networks[0].address"),
    (OK + "cloud_init: {hostname: 'bad host'}\n", "cloud_init.hostname"),
    (OK + "cloud_init: {user_data: 42}\n", "cloud_init.user_data"),
    (OK + "cloud_init: {user_data: '" + "x" * 5000 + "'}\n", "cloud_init.user_data"),
    (OK + "cloud_init: {ssh_authorized_keys: ['not a key']}\n", "cloud_init.ssh_authorized_keys[0]"),
    (OK + "cloud_init: {ssh_authorized_keys: '" + KEY + "'}\n", "cloud_init.ssh_authorized_keys"),
    (OK + "cloud_init: {network_config: 'version: 2'}\n", "cloud_init.network_config"),
    (OK + "cloud_init: {network_config: {version: 2}}\nnetworks: [{network: lan, address: 10.0.0.1/24}]\n",
     "cloud_init.network_config"),
    (OK + "cloud_init: {userdata: x}\n", "cloud_init.userdata"),
    ("name: web\nname: other\nimage: deb\n", "name"),
    ("a: &x [1, 2]\nb: *x\n", "alias"),
    ("[1, 2, 3]\n", "mapping"),
    ("just text\n", "mapping"),
    ("", "mapping"),
    ("name: !!python/object/apply:os.system [id]\nimage: deb\n", "name"),
    ("name: web\nimage: deb\n? [complex]\n: key\n", "keys"),
    ("name: web\n  image: deb\n bad: indent\n", "YAML"),
    ("x: " + "[" * 100 + "]" * 100 + "\n", "deep"),
]


@pytest.mark.parametrize("text,field", BAD_SPECS, ids=[f"spec{i}" for i in range(len(BAD_SPECS))])
def test_bad_specs_name_the_field(config, text, field):
    with pytest.raises(ValidationError) as info:
        parse_spec(text, "vm.yaml", config)
    lines = str(info.value).splitlines()
    assert any(field in line for line in lines), lines
    assert all(line.startswith("vm.yaml") for line in lines)


def test_corpus_is_large_enough():
    assert len(BAD_SPECS) >= 40


def test_network_not_allowed_for_the_user(config):
    spec = parse_spec(OK + "networks: [{network: staff}]\n", "vm.yaml", config)
    with pytest.raises(ValidationError, match=r"networks\[0\].network: user 'nobody' may not use network 'staff'"):
        check_user_access(spec, config, "nobody", "vm.yaml")
    check_user_access(spec, config, "root", "vm.yaml")


def test_bad_bytes_and_sizes(config):
    with pytest.raises(ValidationError, match="not UTF-8"):
        parse_spec(b"name: \xff\xfe\n", "vm.yaml", config)
    with pytest.raises(ValidationError, match="larger than"):
        parse_spec(b"name: web\n#" + b"x" * (2 << 20), "vm.yaml", config)


def test_line_numbers_point_at_the_mistake(config):
    with pytest.raises(ValidationError) as info:
        parse_spec("name: web\nimage: deb\n\ncpus: 0\n", "vm.yaml", config)
    assert str(info.value).startswith("vm.yaml:4: cpus:")


BAD_CONFIGS = [
    ("networks: {}\n", "images"),
    ("images: {a: {path: rel/x}}\n", "images.a.path"),
    ("images: {a: {path: /x, format: vmdk}}\n", "images.a.format"),
    ("images: {a: {path: /x, kernel: /k, firmware: /f}}\n", "images.a.firmware"),
    ("images: {a: {path: /x, initrd: /i}}\n", "images.a.initrd"),
    ("images: {A/B: {path: /x}}\n", "images.A/B"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: bridge}}\n", "networks.n.bridge"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: ovs, bridge: b}}\n", "networks.n.kind"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: vxlan, parent: eth0}}\n", "networks.n.vni"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: vxlan, parent: eth0, vni_range: [9, 1]}}\n",
     "networks.n.vni_range"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: bridge, bridge: b, vni: 5}}\n", "networks.n.vni"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: bridge, bridge: 'a bridge name that is long'}}\n",
     "networks.n.bridge"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: vxlan, parent: e, vni: 1, subnet: 10.0.0.1/24}}\n",
     "networks.n.subnet"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: bridge, bridge: b, subnet: 10.0.0.1/24}}\n",
     "networks.n.subnet"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: bridge, bridge: b, vxlan_mode: unicast}}\n",
     "networks.n.vxlan_mode"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: vxlan, parent: e, vni: 1, vxlan_mode: unicast}}\n",
     "networks.n.vxlan_mode"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: vxlan, parent: e, vni_range: [1, 2], vxlan_mode: unicast, "
     "underlay_addresses: {n1: 10.0.0.300}}}\n", "networks.n.underlay_addresses.n1"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: bridge, bridge: b, subnet6: 'fd00::/64'}}\n", "networks.n.subnet"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: bridge, bridge: b, subnet: 10.0.0.0/24, subnet6: 'fd00::/48'}}\n",
     "networks.n.subnet6"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: bridge, bridge: b, subnet: 10.0.0.0/16, subnet6: 'fd00::/120'}}\n",
     "networks.n.subnet6"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: bridge, bridge: b, subnet: 10.0.0.0/24, "
     "address_range: [10.0.0.9, 10.0.0.3]}}\n", "networks.n.address_range"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: bridge, bridge: b, subnet: 10.0.0.0/24, "
     "address_range: [10.0.0.9, 10.0.1.3]}}\n", "networks.n.address_range"),
    ("images: {a: {path: /x}}\nnetworks: {n: {kind: vxlan, parent: e, vni_range: [1, 2], subnet: 10.0.0.0/24, "
     "address_range: [10.0.0.9, 10.0.0.30]}}\n", "networks.n.address_range"),
    ("images: {a: {path: /x}}\nallocation_timeout: 0\n", "allocation_timeout"),
    ("images: {a: {path: /x}}\nnetworks: {p: {kind: vxlan, parent: e, vni_range: [100, 200]}, "
     "s: {kind: vxlan, parent: e, vni: 150}}\n", "networks.s.vni"),
    ("images: {a: {path: /x}}\ngrace_seconds: 40\n", "grace_seconds"),
    ("images: {a: {path: /x}}\nstate_dir: var/lib\n", "state_dir"),
    ("images: {a: {path: /x}}\nhypervisor: {memory_overhead: -5M}\n", "hypervisor.memory_overhead"),
    ("images: {a: {path: /x}}\nlimits: {max_cpus: 0}\n", "limits.max_cpus"),
    ("images: {a: {path: /x}}\nslurm: {backend: rest}\n", "slurm.backend"),
    ("images: {a: {path: /x}}\nuser_errors: ignore\n", "user_errors"),
    ("images: {a: {path: /x}}\nstatedir: /x\n", "statedir"),
]


@pytest.mark.parametrize("text,field", BAD_CONFIGS, ids=[f"config{i}" for i in range(len(BAD_CONFIGS))])
def test_bad_configs_name_the_field(text, field):
    with pytest.raises(ValidationError) as info:
        parse_config(text, "config.yaml")
    assert any(field in line for line in str(info.value).splitlines()), str(info.value)


YAMLISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "image", "cpus", "memory", "disk", "networks", "network", "mac", "volumes",
                         "path", "readonly", "cloud_init", "user_data", "count", "time", "x"]), children, max_size=5),
    max_leaves=20)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(YAMLISH)
def test_spec_parser_only_raises_its_own_error_on_any_data(config, data):
    try:
        result = parse_spec(yaml.safe_dump(data), "vm.yaml", config)
    except ValidationError as exc:
        assert exc.problems
        return
    assert result.name and result.image in ("deb", "tiny")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_spec_parser_only_raises_its_own_error_on_any_bytes(config, raw):
    try:
        parse_spec(raw, "vm.yaml", config)
    except ValidationError:
        pass


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(YAMLISH)
def test_config_parser_only_raises_its_own_error(data):
    try:
        parse_config(yaml.safe_dump(data), "config.yaml")
    except ValidationError as exc:
        assert exc.problems


def test_validate_cli_prints_one_line_per_problem_and_no_traceback(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG)
    spec = tmp_path / "vm.yaml"
    spec.write_text("name: Web\nimage: nope\ncpu: 3\n")
    exe = os.path.join(os.path.dirname(sys.executable), "slurm-vm")
    proc = subprocess.run([exe, "validate", str(spec)], env={**os.environ, "SLURM_VM_CONFIG": str(cfg)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in proc.stderr   # name and cpu (image is checked after shape)
    assert any("cpu: unknown field; did you mean `cpus`?" in line for line in lines)
    missing = subprocess.run([exe, "validate", str(spec)], env={**os.environ, "SLURM_VM_CONFIG": "/nonexistent"},
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "SLURM_VM_CONFIG" in missing.stderr


def test_count_above_what_macs_allow_is_refused():
    cfg = parse_config("images: {deb: {path: /x, firmware: /f}}\nlimits: {max_count: 4096}\n", "config.yaml")
    parse_spec(OK + "count: 2048\n", "vm.yaml", cfg)
    with pytest.raises(ValidationError, match="count: 2049 is more than 2048, the most VMs a job can have"):
        parse_spec(OK + "count: 2049\n", "vm.yaml", cfg)


def test_addresses_that_fit_are_accepted(config):
    parse_spec(OK + "count: 6\nnetworks: [{network: small}]\n", "vm.yaml", config)
    parse_spec(OK + "count: 10\nnetworks: [{network: shared}]\n", "vm.yaml", config)
    parse_spec(OK + "networks: [{network: shared, address: 10.3.0.99/24, gateway: 10.3.0.1}]\n", "vm.yaml", config)
    parse_spec(OK + "networks: [{network: priv, address: 10.1.0.77/24}]\n", "vm.yaml", config)


def test_image_without_kernel_or_firmware_is_refused_at_validation():
    """The launcher cannot boot it (vm.json needs exactly one): validate and submit say so first."""
    cfg = parse_config("images: {bare: {path: /img/bare.qcow2}}\n", "config.yaml")
    with pytest.raises(ValidationError) as err:
        parse_spec("name: web\nimage: bare\n", "vm.yaml", cfg)
    assert [(p.path, "neither `kernel` nor `firmware`" in p.message) for p in err.value.problems] == [("image", True)]
