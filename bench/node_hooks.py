#!/usr/bin/env python3
"""Node hook wall time beside its floors, in one run (root).

Runs the real slurm-vm-prolog/epilog as subprocesses inside a private network namespace with a
bridge, exactly like the hook tests, and times, interleaved so that load on the machine hits all alike:
  floors       /bin/true as a hook (fork+exec through nsenter); `python -I -c pass` (the interpreter);
               the syscalls alone, from a warm process: `qemu-img create` of the overlay, one tap
               created (bridged, up) and deleted over one netlink socket, the seed ISO written
  non-VM       slurm-vm-prolog/epilog for a job that is not a VM job (the cost every other job pays)
  VM job       prolog/epilog for a one-NIC VM job (filtered, and on a `trusted` network: the
               anti-spoofing filter's cost is the difference); six prologs (then six epilogs) started at once, beside
               six interpreters started at once (what six CPU-bound processes cost on this machine)
  --before BIN another install's slurm-vm-prolog/epilog (e.g. a venv of an older commit), timed in the
               same loop on other job ids: before and after side by side
Prints a markdown table (median, p95 in ms). Usage: bench/node_hooks.py [--runs N] [--before BIN_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from devtools.hooknode import OTHER, SPEC, USER, Node, ensure_user  # noqa: E402
from slurm_vm.node.configcache import CACHE_ROOT  # noqa: E402

# Runs inside the namespace in one warm interpreter: times only the kernel's work for one tap.
TAP_FLOOR = r"""
import json, sys, time
from slurm_vm.networks import links
IPRoute = links._iproute_class()
out = []
with IPRoute() as ipr:
    master = ipr.link_lookup(ifname="br-vm")[0]
    for i in range(int(sys.argv[1])):
        start = time.perf_counter()
        ipr.link("add", ifname="svmfloor0", kind="tuntap", mode="tap", uid=4201, gid=4201,
                 ifr={"no_pi": True, "vnet_hdr": True})
        index = ipr.link_lookup(ifname="svmfloor0")[0]
        ipr.link("set", index=index, state="up", master=master)
        ipr.link("del", index=index)
        out.append((time.perf_counter() - start) * 1000)
print(json.dumps(out))
"""


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[-1]} failed: {proc.stderr.strip()}")
    return elapsed * 1000


def timed_together(argvs: list[list[str]], envs: list[dict[str, str]]) -> list[float]:
    """Start all at once; each one's wall time from the common start."""
    start = time.perf_counter()
    procs = [subprocess.Popen(a, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for a, e in zip(argvs, envs)]
    times = []
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        times.append((time.perf_counter() - start) * 1000)
        if proc.returncode != 0:
            raise SystemExit(f"concurrent hook failed: {err.strip()}")
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def row(name: str, values: list[float]) -> str:
    return f"| {name} | {len(values)} | {statistics.median(values):.1f} | {pct(values, 0.95):.1f} |"


def seed_iso_bytes() -> bytes:
    from slurm_vm.disks.seed import build_seed_iso
    from slurm_vm.node.cloudinit import render_meta_data, render_user_data
    user_data, vendor = render_user_data("#cloud-config\nruncmd: [echo hi]\n", [], "webhost")
    return build_seed_iso(render_meta_data("i-1000", "webhost"), user_data, "version: 2\n", vendor)


def iso_write_ms(directory: str, data: bytes) -> float:
    from slurm_vm.disks.safefs import write_file_atomic
    start = time.perf_counter()
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        write_file_atomic(dir_fd, "seed.iso", data, 0, 0, 0o600)
    finally:
        os.close(dir_fd)
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--before", metavar="BIN_DIR", help="bin dir of another install to time alongside")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    ensure_user(USER, 4201)
    ensure_user(OTHER, 4202)
    netns = f"tkb{os.getpid() % 10000}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=20)
    results: dict[str, list[float]] = {}

    def add(name: str, value: float | list[float]) -> None:
        results.setdefault(name, []).extend(value if isinstance(value, list) else [value])

    try:
        subprocess.run(["ip", "-n", netns, "link", "add", "br-vm", "type", "bridge"], check=True, timeout=20)
        subprocess.run(["ip", "-n", netns, "link", "set", "br-vm", "up"], check=True, timeout=20)
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o755)
            node = Node(tmp, netns)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", node.base, "100M"], check=True, timeout=60)
            os.chmod(node.base, 0o644)
            ns = ["nsenter", f"--net=/run/netns/{netns}"]
            bin_dir = os.path.dirname(sys.executable)
            prolog, epilog = os.path.join(bin_dir, "slurm-vm-prolog"), os.path.join(bin_dir, "slurm-vm-epilog")
            plain_env = node.env(1, None)
            plain_env.pop("SLURM_JOB_COMMENT", None)
            spec = SPEC.replace("disk: 64M\n", "")
            trusted_spec = spec.replace("network: lan", "network: open")
            node.write_config({"networks": {"lan": {"kind": "bridge", "bridge": "br-vm"},
                                            "open": {"kind": "bridge", "bridge": "br-vm", "trusted": True}}})
            before_config = os.path.join(tmp, "config-before.yaml")   # older installs know no `trusted`
            with open(node.config_path) as src, open(before_config, "w") as dst:
                dst.write(src.read().replace("    trusted: true\n", ""))
            iso = seed_iso_bytes()
            scratch = os.path.join(tmp, "scratch")
            os.mkdir(scratch)
            overlay = os.path.join(scratch, "overlay.qcow2")
            for i in range(args.runs):
                add("floor: no-op hook (`/bin/true`)", timed([*ns, "/bin/true"], plain_env))
                add("floor: `python -I -c pass`", timed([*ns, sys.executable, "-I", "-c", "pass"], plain_env))
                add("floor: `qemu-img create` (overlay on the base)",
                    timed(["qemu-img", "create", "-q", "-f", "qcow2", "-b", node.base, "-F", "qcow2", overlay]))
                os.unlink(overlay)
                add("floor: seed ISO write (bytes ready)", iso_write_ms(scratch, iso))
                add("non-VM job: prolog", timed([*ns, prolog], plain_env))
                add("non-VM job: epilog", timed([*ns, epilog], plain_env))
                env = node.env(1000 + i, spec)
                add("VM job, 1 NIC: prolog", timed([*ns, prolog], env))
                add("VM job, 1 NIC: epilog", timed([*ns, epilog], env))
                env = node.env(2000 + i, trusted_spec)   # the anti-spoofing filter's cost is the difference
                add("VM job, 1 NIC, `trusted` network (no filter): prolog", timed([*ns, prolog], env))
                add("VM job, 1 NIC, `trusted` network (no filter): epilog", timed([*ns, epilog], env))
                if args.before:
                    old_prolog = os.path.join(args.before, "slurm-vm-prolog")
                    old_epilog = os.path.join(args.before, "slurm-vm-epilog")
                    old_plain = dict(plain_env, SLURM_VM_CONFIG=before_config)
                    add("before: non-VM job: prolog", timed([*ns, old_prolog], old_plain))
                    add("before: non-VM job: epilog", timed([*ns, old_epilog], old_plain))
                    env = dict(node.env(3000 + i, spec), SLURM_VM_CONFIG=before_config)
                    add("before: VM job, 1 NIC: prolog", timed([*ns, old_prolog], env))
                    add("before: VM job, 1 NIC: epilog", timed([*ns, old_epilog], env))
            tap = subprocess.run([*ns, sys.executable, "-c", TAP_FLOOR, str(args.runs)], capture_output=True,
                                 text=True, timeout=300, check=True)
            add("floor: tap create + bridge + up + delete (one netlink socket)", json.loads(tap.stdout))
            for r in range(max(1, args.runs // 6)):
                add("floor: 6 concurrent `python -I -c pass`",
                    timed_together([[*ns, sys.executable, "-I", "-c", "pass"]] * 6, [plain_env] * 6))
                envs = [node.env(5000 + 10 * r + k, spec) for k in range(6)]
                add("6 concurrent VM jobs: prolog", timed_together([[*ns, prolog]] * 6, envs))
                add("6 concurrent VM jobs: epilog", timed_together([[*ns, epilog]] * 6, envs))
                if args.before:
                    envs = [dict(node.env(7000 + 10 * r + k, spec), SLURM_VM_CONFIG=before_config) for k in range(6)]
                    add("before: 6 concurrent VM jobs: prolog",
                        timed_together([[*ns, os.path.join(args.before, "slurm-vm-prolog")]] * 6, envs))
                    add("before: 6 concurrent VM jobs: epilog",
                        timed_together([[*ns, os.path.join(args.before, "slurm-vm-epilog")]] * 6, envs))
            shutil.rmtree(CACHE_ROOT + tmp, ignore_errors=True)   # the hooks' config cache for this node
    finally:
        subprocess.run(["ip", "netns", "del", netns], timeout=20)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"Machine: {os.cpu_count()} CPUs ({cpu}), Python {sys.version.split()[0]}, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| what | runs | median ms | p95 ms |\n|---|---|---|---|")
    order = sorted(results, key=lambda name: (name.startswith("before"), not name.startswith("floor"),
                                              list(results).index(name)))
    for name in order:
        print(row(name, results[name]))
    single = statistics.median(results["VM job, 1 NIC: prolog"])
    print(f"\n6 concurrent prologs: p95 = {pct(results['6 concurrent VM jobs: prolog'], 0.95) / single:.1f}x "
          "the single-job median (target <= 3x)")
    python = statistics.median(results["floor: `python -I -c pass`"])
    print(f"6 concurrent `python -I -c pass`: p95 = "
          f"{pct(results['floor: 6 concurrent `python -I -c pass`'], 0.95) / python:.1f}x its single median "
          f"(the CPU floor of that ratio on {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
