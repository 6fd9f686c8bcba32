"""Builds slurm-vm's test guests from Debian packages into a cache dir (outside the checkout).

  tiny    vmlinux + tiny-initrd.gz: a busybox guest (guest_files/tiny-init)       ~10 s
  debian  debian.qcow2 + debian-initrd.gz: Debian 12 with cloud-init and openssh  ~2-3 min

Each part is rebuilt only when missing or when its recipe (this file and guest_files/) changed.
guests.json in the cache says where the parts are and which kernel command line each guest needs.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile

CACHE = os.environ.get("SLURM_VM_TEST_CACHE", "/var/cache/slurm-vm/guests")
FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest_files")
TINY_MODULES = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
                "virtio_blk", "failover", "net_failover", "virtio_net", "button", "evdev", "cdrom", "isofs",
                "9pnet_virtio", "9p", "fuse", "virtiofs",    # shares (`mounts:`): virtio-9p and virtio-fs
                "bochs"]     # the display (QEMU's VGA): DRM framebuffer, fbcon shows tty1 (slurm-vm vnc)
ROOT_MODULES = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
                "virtio_blk", "crc16", "crc32c_generic", "libcrc32c", "mbcache", "jbd2", "ext4"]
DEBIAN_PACKAGES = ["systemd-sysv", "udev", "dbus", "cloud-init", "python3-cffi-backend", "openssh-server",
                   "ifupdown", "iproute2", "iputils-ping", "kmod", "sudo", "netbase", "isc-dhcp-client",
                   "qemu-guest-agent"]   # slurm-vm exec, guest addresses, freeze/thaw (docs/test-guests.md)
TINY_CMDLINE = "console=ttyS0 panic=-1 quiet"
DEBIAN_CMDLINE = "console=ttyS0 root=LABEL=svmroot net.ifnames=0 panic=-1 quiet"


def log(message: str) -> None:
    print(f"build-test-guests: {message}", flush=True)


def run(argv: list[str], timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, timeout=timeout, **kw)


def recipe_hash(init_script: str, *extra: str) -> str:
    digest = hashlib.sha256()
    for path in (os.path.abspath(__file__), os.path.join(FILES, init_script)):
        with open(path, "rb") as fh:
            digest.update(fh.read())
    for item in extra:
        digest.update(item.encode())
    return digest.hexdigest()[:16]


def kernel_package() -> str:
    out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split()[1]
    raise SystemExit("build-test-guests: no linux-image package found (run apt-get update)")


def fetch_kernel(work: str) -> tuple[str, str]:
    """(path of the extracted package tree, kernel version)."""
    package = kernel_package()
    run(["apt-get", "download", "-q", package], cwd=work, capture_output=True)
    deb = glob.glob(os.path.join(work, f"{package}_*.deb"))[0]
    tree = os.path.join(work, "kernel")
    run(["dpkg", "-x", deb, tree])
    version = os.listdir(os.path.join(tree, "lib", "modules"))[0]
    return tree, version


def extract_vmlinux(vmlinuz: str, out: str) -> None:
    """The xz payload of a bzImage, decompressed: QEMU boots it through PVH, skipping in-guest decompression."""
    data = open(vmlinuz, "rb").read()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise SystemExit("build-test-guests: no xz payload in the kernel image")
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    with open(out + ".tmp", "wb") as fh:
        fh.write(decompressor.decompress(data[start:]))
    os.replace(out + ".tmp", out)


def module_depends(path: str) -> list[str]:
    data = open(path, "rb").read()
    at = data.find(b"\x00depends=")
    if at < 0:
        return []
    end = data.index(b"\x00", at + 1)
    return [d for d in data[at + 9:end].decode().split(",") if d]


def module_order(tree: str, version: str, wanted: list[str]) -> list[str]:
    """Paths of the wanted modules and their dependencies, dependencies first; built-ins are skipped."""
    root = os.path.join(tree, "lib", "modules", version)
    index = {}
    for path in glob.glob(os.path.join(root, "kernel", "**", "*.ko"), recursive=True):
        index[os.path.basename(path)[:-3].replace("-", "_")] = path
    order: list[str] = []

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        path = index.get(name)
        if path is None or path in order:
            return
        for dep in module_depends(path):
            visit(dep)
        order.append(path)

    for name in wanted:
        visit(name)
    return order


def busybox_binary() -> str:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(candidate):
            return candidate
    raise SystemExit("build-test-guests: busybox-static is not installed (scripts/install-deps)")


def make_initramfs(out: str, init_script: str, modules: list[str]) -> None:
    with tempfile.TemporaryDirectory() as root:
        for sub in ("bin", "dev", "proc", "sys", "etc", "lib/modules", "mnt", "tmp", "run"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        shutil.copy2(busybox_binary(), os.path.join(root, "bin", "busybox"))
        shutil.copy2(os.path.join(FILES, init_script), os.path.join(root, "init"))
        os.chmod(os.path.join(root, "init"), 0o755)
        names = []
        for path in modules:
            shutil.copy2(path, os.path.join(root, "lib", "modules", os.path.basename(path)))
            names.append(os.path.basename(path))
        with open(os.path.join(root, "etc", "modules-order"), "w") as fh:
            fh.write("\n".join(names) + "\n")
        files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True, timeout=60).stdout
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files, capture_output=True,
                              check=True, timeout=120).stdout
        import gzip
        with gzip.open(out + ".tmp", "wb", compresslevel=6) as fh:
            fh.write(cpio)
        os.replace(out + ".tmp", out)


def stamp_ok(cache: str, part: str, digest: str, outputs: list[str]) -> bool:
    stamp = os.path.join(cache, f".{part}.recipe")
    return all(os.path.exists(os.path.join(cache, o)) for o in outputs) and os.path.exists(stamp) and \
        open(stamp).read() == digest


def write_stamp(cache: str, part: str, digest: str) -> None:
    with open(os.path.join(cache, f".{part}.recipe"), "w") as fh:
        fh.write(digest)


def build_tiny(cache: str, work: str, kernel: tuple[str, str] | None) -> tuple[str, str]:
    tree, version = kernel or fetch_kernel(work)
    vmlinuz = glob.glob(os.path.join(tree, "boot", "vmlinuz-*"))[0]
    extract_vmlinux(vmlinuz, os.path.join(cache, "vmlinux"))
    make_initramfs(os.path.join(cache, "tiny-initrd.gz"), "tiny-init", module_order(tree, version, TINY_MODULES))
    return tree, version


def build_debian(cache: str, work: str, kernel: tuple[str, str] | None, suite: str = "bookworm") -> None:
    tree, version = kernel or fetch_kernel(work)
    root = os.path.join(work, "rootfs")
    log(f"debootstrap {suite} (about a minute)")
    run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", suite, root],
        timeout=1200, stdout=subprocess.DEVNULL)
    configure_rootfs(root, tree, version)
    raw = os.path.join(work, "root.ext4")
    run(["truncate", "-s", "1G", raw])
    run(["mkfs.ext4", "-q", "-F", "-L", "svmroot", "-d", root, raw], timeout=600)
    run(["qemu-img", "convert", "-c", "-O", "qcow2", raw, os.path.join(cache, "debian.qcow2.tmp")], timeout=900)
    os.replace(os.path.join(cache, "debian.qcow2.tmp"), os.path.join(cache, "debian.qcow2"))
    make_initramfs(os.path.join(cache, "debian-initrd.gz"), "root-init", module_order(tree, version, ROOT_MODULES))


def configure_rootfs(root: str, tree: str, version: str) -> None:
    cfg = os.path.join(root, "etc", "cloud", "cloud.cfg.d")
    os.makedirs(cfg, exist_ok=True)
    with open(os.path.join(cfg, "90-slurm-vm-test.cfg"), "w") as fh:
        fh.write("datasource_list: [ NoCloud, None ]\nlocale: C.UTF-8\nssh_genkeytypes: [ed25519]\n")
    with open(os.path.join(root, "etc", "fstab"), "w") as fh:
        fh.write("LABEL=svmroot / ext4 defaults 0 1\n")
    open(os.path.join(root, "etc", "machine-id"), "w").close()
    for key in glob.glob(os.path.join(root, "etc", "ssh", "ssh_host_*")):
        os.unlink(key)
    with open(os.path.join(root, "etc", "hostname"), "w") as fh:
        fh.write("localhost\n")
    modules = os.path.join(root, "lib", "modules", version)
    shutil.rmtree(modules, ignore_errors=True)
    shutil.copytree(os.path.join(tree, "lib", "modules", version), modules, symlinks=True)
    run(["chroot", root, "depmod", version], timeout=300)
    for cache_dir in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in glob.glob(os.path.join(root, cache_dir, "*")):
            if os.path.isfile(path):
                os.unlink(path)


def guests_json(cache: str) -> dict:
    info = {}
    if os.path.exists(os.path.join(cache, "tiny-initrd.gz")):
        info["tiny"] = {"kernel": os.path.join(cache, "vmlinux"), "initrd": os.path.join(cache, "tiny-initrd.gz"),
                        "cmdline": TINY_CMDLINE}
    if os.path.exists(os.path.join(cache, "debian.qcow2")):
        info["debian"] = {"kernel": os.path.join(cache, "vmlinux"),
                          "initrd": os.path.join(cache, "debian-initrd.gz"),
                          "image": os.path.join(cache, "debian.qcow2"), "cmdline": DEBIAN_CMDLINE}
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["tiny", "debian"], help="build one guest only")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache is current")
    parser.add_argument("--cache", default=CACHE, help=f"cache dir (default {CACHE})")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("build-test-guests: run as root (debootstrap, chroot)")
    cache = args.cache
    os.makedirs(cache, exist_ok=True)
    os.chmod(cache, 0o755)
    parts = [args.only] if args.only else ["tiny", "debian"]
    kernel = None
    with tempfile.TemporaryDirectory(prefix="svm-guests-", dir="/var/tmp") as work:
        if "tiny" in parts:
            digest = recipe_hash("tiny-init")
            if args.force or not stamp_ok(cache, "tiny", digest, ["vmlinux", "tiny-initrd.gz"]):
                log("building the tiny busybox guest")
                kernel = build_tiny(cache, work, kernel)
                write_stamp(cache, "tiny", digest)
            else:
                log("tiny guest is current")
        if "debian" in parts:
            digest = recipe_hash("root-init", *DEBIAN_PACKAGES)
            if args.force or not stamp_ok(cache, "debian", digest, ["vmlinux", "debian.qcow2", "debian-initrd.gz"]):
                log("building the Debian cloud-init guest")
                if not os.path.exists(os.path.join(cache, "vmlinux")):
                    kernel = build_tiny(cache, work, kernel)
                build_debian(cache, work, kernel)
                write_stamp(cache, "debian", digest)
            else:
                log("Debian guest is current")
    for name in os.listdir(cache):
        os.chmod(os.path.join(cache, name), 0o644)
    with open(os.path.join(cache, "guests.json"), "w") as fh:
        json.dump(guests_json(cache), fh, indent=2)
    os.chmod(os.path.join(cache, "guests.json"), 0o644)
    log(f"done: {cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
