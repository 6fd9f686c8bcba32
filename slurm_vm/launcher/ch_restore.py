"""Continuing a cloud-hypervisor guest from its checkpoint, possibly on another node.

The snapshot's config.json is the VmConfig of the node that saved it: its vCPU affinity names that node's
cores, its NICs were file descriptors of that launcher, its serial socket and disk paths were that run dir's.
The launcher does not use the checkpoint dir as cloud-hypervisor's source_url. After the checkpoint was
verified (store.find_for_restore: owner, identity, sha256 of every file), it builds a restore dir in the job's
run dir:

  config.json     read once into memory, its bytes checked against the manifest's sha256, re-targeted by
                  retarget_config() (pure: saved config + this VM's definition + this node's cores in, config
                  out) and written there;
  state.json      copied, and the copy's sha256 checked against the manifest;
  memory-ranges   (and any other state file) a symlink to the verified file in the checkpoint dir: it is as
                  large as the guest's RAM, the checkpoint dir is the user's own (0700), and
                  cloud-hypervisor reads it once while it restores.

Then `cloud-hypervisor --api-socket ... --event-monitor ... --restore source_url=file://RESTORE_DIR,
net_fds=[net0@[FD],...]` (v53: the NICs' new tap fds are passed on the command line, by NIC id), wait until
vm.info says Paused, PUT /vm.resume.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import time

from ..errors import HypervisorError
from .cloud_hypervisor import CloudHypervisorRuntime
from ..hypervisor.definition import VMDefinition
from ..limits import CH_API_SOCKET, CH_EVENT_LOG, VMM_SERIAL_SOCKET
from ..hypervisor.runtime import say
from .ch_snapshot import CONFIG_NAME
from ..checkpoint.manifest import MAX_MANIFEST_BYTES, CheckpointRefused, FileEntry, Manifest, version_mismatch
from ..checkpoint.files import copy_with_digest
from ..checkpoint.store import Found

RESTORE_DIR = "restore"
RESTORE_TIMEOUT = 600.0
MAX_CONFIG_BYTES = 16 * MAX_MANIFEST_BYTES
COPY_LIMIT = 64 << 20      # state files up to this size are copied and re-hashed; larger ones (RAM) linked
VERSION_TIMEOUT = 10.0
POLL = 0.1


def _object(parent: dict, key: str) -> dict:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise CheckpointRefused(f"config.json: {key} is not an object")
    return value


def _list(parent: dict, key: str, count: int, what: str) -> list[dict]:
    value = parent.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise CheckpointRefused(f"config.json: {key} is not a list of objects")
    if len(value) != count:
        raise CheckpointRefused(f"the snapshot has {len(value)} {what}, this VM {count}")
    return value


def retarget_config(saved: object, defn: VMDefinition, cores: list[int]) -> dict:
    """The snapshot's VmConfig (config.json, already verified) made to run here: this node's cores as the vCPU
    affinity, this run dir's disk and serial socket paths, this node's kernel/initramfs/firmware paths.
    The NICs stay file-descriptor backed (their fds come with --restore net_fds). Everything else is kept.
    Raises CheckpointRefused when the snapshot is not of this VM's shape."""
    if not isinstance(saved, dict):
        raise CheckpointRefused("config.json is not a JSON object")
    config = copy.deepcopy(saved)
    cpus, memory = _object(config, "cpus"), _object(config, "memory")
    if cpus.get("boot_vcpus") != defn.cpus or cpus.get("max_vcpus", defn.cpus) != defn.cpus:
        raise CheckpointRefused(f"the snapshot has {cpus.get('boot_vcpus')} vCPUs, this VM {defn.cpus}")
    if len(cores) != defn.cpus:
        raise CheckpointRefused(f"{len(cores)} cores for {defn.cpus} vCPUs")
    if memory.get("size") != defn.memory_bytes:
        raise CheckpointRefused(f"the snapshot has {memory.get('size')} bytes of RAM, this VM {defn.memory_bytes}")
    cpus["affinity"] = [{"vcpu": i, "host_cpus": [core]} for i, core in enumerate(cores)]
    for i, (disk, want) in enumerate(zip(_list(config, "disks", len(defn.disks), "disks"), defn.disks)):
        if disk.get("id") != f"disk{i}" or bool(disk.get("readonly")) != want.readonly:
            raise CheckpointRefused(f"config.json: disk {i} is not this VM's disk{i}")
        disk["path"] = want.path
    for i, (net, nic) in enumerate(zip(_list(config, "net", len(defn.nics), "NICs"), defn.nics)):
        if net.get("id") != f"net{i}" or str(net.get("mac", "")).lower() != nic.mac.lower():
            raise CheckpointRefused(f"config.json: NIC {i} is not this VM's net{i} ({nic.mac})")
        if not isinstance(net.get("fds"), list) or len(net["fds"]) != 1 or net.get("tap") is not None:
            raise CheckpointRefused(f"config.json: NIC {i} was not backed by one file descriptor")
    if config.get("fs"):
        raise CheckpointRefused("config.json: the snapshot has virtiofs shares, which cannot be restored")
    serial = _object(config, "serial")
    if serial.get("mode") != "Socket":
        raise CheckpointRefused("config.json: the serial port was not a socket")
    serial["socket"] = defn.path(VMM_SERIAL_SOCKET)
    payload = _object(config, "payload")
    for key, value in (("kernel", defn.boot.kernel), ("initramfs", defn.boot.initrd),
                       ("firmware", defn.boot.firmware)):
        if value:
            payload[key] = value
        else:
            payload.pop(key, None)
    return config


def net_fds_option(nic_fds: list[int]) -> str:
    """v53's --restore net_fds: `[net0@[7],net1@[8]]`, one tap fd per NIC (ch_argv's NIC ids)."""
    return "[" + ",".join(f"net{i}@[{fd}]" for i, fd in enumerate(nic_fds)) + "]"


def restore_option(restore_dir: str, nic_fds: list[int]) -> str:
    if "," in restore_dir or "=" in restore_dir:
        raise HypervisorError(f"cloud-hypervisor cannot take a restore path with a comma or '=': {restore_dir}")
    option = f"source_url=file://{restore_dir}"
    return option + (f",net_fds={net_fds_option(nic_fds)}" if nic_fds else "")


def restore_argv(defn: VMDefinition, restore_dir: str, nic_fds: list[int]) -> list[str]:
    """--restore excludes every VM option (they all come from config.json); only the VMM's own stay."""
    if len(nic_fds) != len(defn.nics):
        raise HypervisorError("one open file descriptor per NIC is needed")
    return [defn.cloud_hypervisor_binary,
            "--api-socket", f"path={defn.path(CH_API_SOCKET)}",
            "--event-monitor", f"path={defn.path(CH_EVENT_LOG)}",
            "--restore", restore_option(restore_dir, nic_fds)]


def read_verified(path: str, entry: FileEntry) -> bytes:
    """The file's bytes, read once, checked against the manifest's sha256 (what is used is what was hashed)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        data = os.read(fd, MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES or len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise CheckpointRefused(f"{entry.name} does not match its sha256 in the manifest (damaged)")
    return data


def build_restore_dir(found: Found, defn: VMDefinition, cores: list[int]) -> str:
    manifest: Manifest = found.manifest
    names = [e.name for e in manifest.states]
    if not names or names[0] != CONFIG_NAME:
        raise CheckpointRefused("the checkpoint has no cloud-hypervisor config.json")
    target = defn.path(RESTORE_DIR)
    shutil.rmtree(target, ignore_errors=True)
    os.mkdir(target, 0o700)
    try:
        saved = read_verified(os.path.join(found.path, CONFIG_NAME), manifest.states[0])
        try:
            config = retarget_config(json.loads(saved), defn, cores)
        except ValueError:
            raise CheckpointRefused("config.json is not JSON (damaged)") from None
        fd = os.open(os.path.join(target, CONFIG_NAME), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh)
        for entry in manifest.states[1:]:
            source = os.path.join(found.path, entry.name)
            if entry.size <= COPY_LIMIT:
                if copy_with_digest(source, target, entry.name).sha256 != entry.sha256:
                    raise CheckpointRefused(f"{entry.name} does not match its sha256 in the manifest (damaged)")
            else:
                os.symlink(source, os.path.join(target, entry.name))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def installed_version(binary: str) -> str:
    """`cloud-hypervisor --version` prints `cloud-hypervisor v53.0`: the build version vmm.ping reports."""
    try:
        proc = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HypervisorError(f"cannot run {binary} --version: {exc}") from None
    words = proc.stdout.split()
    if proc.returncode != 0 or len(words) < 2:
        raise HypervisorError(f"{binary} --version printed no version")
    return words[1]


class RestoringCloudHypervisorRuntime(CloudHypervisorRuntime):
    def __init__(self, defn, accelerator: str, cores: list[int], found: Found):
        super().__init__(defn, accelerator, cores)
        self.found = found
        self.restore_dir: str | None = None
        self.before_resume = lambda: None     # a multi-VM job: wait until every VM has loaded (group.py)

    def start(self, fds: list[int], log_path: str) -> None:
        """Refuses (CheckpointRefused) before starting anything when this node's cloud-hypervisor differs."""
        problem = version_mismatch(self.found.manifest, "cloud-hypervisor",
                                   installed_version(self.defn.cloud_hypervisor_binary))
        if problem:
            raise CheckpointRefused(problem)
        self.restore_dir = build_restore_dir(self.found, self.defn, self.cores)
        super().start(fds, log_path)

    def argv(self, fds: list[int]) -> list[str]:
        assert self.restore_dir is not None
        return restore_argv(self.defn, self.restore_dir, fds)

    def after_start(self, deadline: float) -> None:
        started = time.monotonic()
        try:
            super().after_start(deadline)     # API socket, serial mux, vmm.ping
            self.wait_paused(max(deadline, started + RESTORE_TIMEOUT))
        except HypervisorError as exc:
            if self.proc is not None and self.proc.poll() is not None:
                raise CheckpointRefused(f"cloud-hypervisor could not restore the snapshot ({exc}); see its log")
            raise
        self.before_resume()
        api = self.api()
        try:
            api.resume()
        finally:
            api.close()
        shutil.rmtree(self.restore_dir or "", ignore_errors=True)
        manifest = self.found.manifest
        say(f"restored from {self.found.path} in {time.monotonic() - started:.2f}s (saved by job "
            f"{manifest.job_id} run {manifest.restart_count}, {manifest.reason})")

    def wait_paused(self, deadline: float) -> None:
        """cloud-hypervisor serves its API while it restores; the VM exists, Paused, once it is done."""
        while True:
            api = self.api()
            try:
                state = api.info().get("state")
            except HypervisorError:
                state = None
            finally:
                api.close()
            if state == "Paused":
                return
            if state not in (None, "Created"):
                raise CheckpointRefused(f"the restored VM is {state}, not Paused")
            if self.proc.poll() is not None:  # type: ignore[union-attr]
                raise HypervisorError(f"cloud-hypervisor exited while restoring (status {self.proc.returncode})")
            if time.monotonic() > deadline:
                raise HypervisorError("the restore did not finish in time")
            time.sleep(POLL)
