"""Throughput of a share (`mounts:`) against the VM's overlay disk, in one run (root; tiny guest, TCG).

For each share transport (virtio-9p, virtio-fs with virtiofsd) the launcher boots the tiny guest as
the unprivileged user svmtest with a qcow2 overlay disk and one shared directory; inside the guest a
script writes 256 MiB (dd, fsync) and reads it back (page cache dropped first), on the share and on
the disk, and prints the times on the serial console. Prints MiB/s for each; results go into
docs/performance.md by hand.

  /opt/slurm-vm/venv/bin/python bench/shares.py [--mib 256] [--transports 9p,virtiofs]
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from devtools.vmcluster import GUEST_CACHE  # noqa: E402
from slurm_vm.disks.seed import build_seed_iso  # noqa: E402
from slurm_vm.mounts import mount_tag  # noqa: E402
from slurm_vm.node.cloudinit import render_meta_data  # noqa: E402
from slurm_vm.node.shares import SharePlan, mounts_vendor_data  # noqa: E402

USER = "svmtest"
TARGET = "/mnt/share"
MARK = "SLURM-VM-TEST bench"

SCRIPT = """t() { cut -d' ' -f1 /proc/uptime; }
run() {
  a=$(t); dd if=/dev/zero of=$2 bs=1M count={mib} conv=fsync 2>/dev/null; b=$(t)
  sync; echo 3 > /proc/sys/vm/drop_caches
  c=$(t); dd if=$2 of=/dev/null bs=1M count={mib} 2>/dev/null; d=$(t)
  echo "{mark} $1 $a $b $c $d" > /dev/console
}
run share {target}/bench.bin
run disk /dev/vda
echo "{mark} owner $(stat -c %u {target}/bench.bin)" > /dev/console
sync; poweroff -f
"""


def user_data(mib: int) -> str:
    body = SCRIPT.replace("{mib}", str(mib)).replace("{mark}", MARK).replace("{target}", TARGET)
    return ("#cloud-config\nwrite_files:\n- path: /bench.sh\n  permissions: '0755'\n  content: |\n" +
            "".join(f"    {line}\n" for line in body.splitlines()) + "runcmd:\n- sh /bench.sh\n")


def one_run(transport: str, mib: int, base: str) -> dict[str, tuple[float, float]]:
    tiny = json.load(open(os.path.join(GUEST_CACHE, "guests.json")))["tiny"]
    user = pwd.getpwnam(USER)
    run_dir = os.path.join(base, transport, "run")
    share_dir = os.path.join(base, transport, "share")
    os.makedirs(run_dir)
    os.makedirs(share_dir)
    tag = mount_tag(TARGET)
    vendor = mounts_vendor_data((SharePlan(0, share_dir, TARGET, tag, False),), transport, None)
    with open(os.path.join(run_dir, "seed.iso"), "wb") as fh:
        fh.write(build_seed_iso(render_meta_data(f"bench-{transport}", "bench"), user_data(mib), None, vendor))
    overlay = os.path.join(run_dir, "overlay.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", overlay, f"{mib + 64}M"], check=True, timeout=60)
    definition = {
        "job_id": 1, "name": "bench", "cpus": 1, "memory_bytes": 512 << 20, "hypervisor": "qemu",
        "accelerator": "auto",
        "boot": {"kernel": tiny["kernel"], "initrd": tiny["initrd"], "cmdline": tiny["cmdline"], "firmware": None},
        "disks": [{"path": overlay, "format": "qcow2", "readonly": False, "role": "root", "backing": False},
                  {"path": os.path.join(run_dir, "seed.iso"), "format": "raw", "readonly": True, "role": "seed",
                   "backing": False}],
        "nics": [], "run_dir": run_dir, "grace_seconds": 5, "qemu_binary": "/usr/bin/qemu-system-x86_64",
        "cloud_hypervisor_binary": "/nonexistent", "share_transport": transport,
        "shares": [{"tag": tag, "path": share_dir, "readonly": False}]}
    with open(os.path.join(run_dir, "vm.json"), "w") as fh:
        json.dump(definition, fh)
    for path in (run_dir, share_dir, *[os.path.join(run_dir, n) for n in os.listdir(run_dir)]):
        os.chown(path, user.pw_uid, user.pw_gid)
    proc = subprocess.run(["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", sys.executable, "-m",
                           "slurm_vm.launcher", os.path.join(run_dir, "vm.json")], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    try:
        serial = open(os.path.join(run_dir, "serial.log"), errors="replace").read()
    except FileNotFoundError:
        serial = ""
    results: dict[str, tuple[float, float]] = {}
    for line in serial.splitlines():
        if line.startswith(MARK) and len(line.split()) == 7:
            _, _, what, a, b, c, d = line.split()
            results[what] = (mib / (float(b) - float(a)), mib / (float(d) - float(c)))
        elif line.startswith(MARK + " owner"):
            owner = int(line.split()[-1])
            results["owner_is_user"] = (float(owner == user.pw_uid), 0.0)
    if "share" not in results or "disk" not in results:
        raise SystemExit(f"bench: {transport} run failed:\n{proc.stderr[-2000:]}\n{serial[-2000:]}")
    host_owner = os.stat(os.path.join(share_dir, "bench.bin")).st_uid
    results["host_owner_is_user"] = (float(host_owner == user.pw_uid), 0.0)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--transports", default="9p,virtiofs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root (it starts the guest as the user svmtest)")
    base = tempfile.mkdtemp(prefix="svm-bench-shares-", dir="/var/tmp")
    os.chmod(base, 0o755)
    try:
        print(f"{'path':<16} {'write MiB/s':>12} {'read MiB/s':>12}   ({args.mib} MiB, tiny guest, TCG, 1 vCPU)")
        for transport in args.transports.split(","):
            os.makedirs(os.path.join(base, transport))
            os.chmod(os.path.join(base, transport), 0o755)
            started = time.monotonic()
            results = one_run(transport, args.mib, base)
            print(f"{transport + ' share':<16} {results['share'][0]:>12.1f} {results['share'][1]:>12.1f}")
            print(f"{'overlay disk':<16} {results['disk'][0]:>12.1f} {results['disk'][1]:>12.1f}"
                  f"   (same run; {time.monotonic() - started:.0f}s; file owned by the user on the host: "
                  f"{bool(results['host_owner_is_user'][0])})")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
