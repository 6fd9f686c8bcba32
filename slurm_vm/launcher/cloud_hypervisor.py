"""cloud-hypervisor: the command line and the VmConfig (pure), and its REST API over a unix socket (httpx).

cloud-hypervisor needs a real KVM, so on the development machines these are checked against its
published API (shared/reference/cloud-hypervisor-v53.0-api.yaml) rather than run: see docs/hypervisors.md.
"""

from __future__ import annotations

import time

from ..errors import HypervisorError
from ..limits import CH_API_SOCKET as API_SOCKET
from ..limits import CH_EVENT_LOG as EVENT_LOG
from ..limits import SERIAL_LOG, SERIAL_SOCKET, VMM_SERIAL_SOCKET
from ..hypervisor.definition import VMDefinition, boot_argv
from ..hypervisor.runtime import Runtime, say
from ..hypervisor.shares import ch_fs_argv, ch_fs_config

API_TIMEOUT = 10.0


def _affinity(cores: list[int]) -> str:
    return "[" + ",".join(f"{i}@[{core}]" for i, core in enumerate(cores)) + "]"


def ch_argv(defn: VMDefinition, cores: list[int], nic_fds: list[int]) -> list[str]:
    argv = [defn.cloud_hypervisor_binary,
            "--api-socket", f"path={defn.path(API_SOCKET)}",
            "--event-monitor", f"path={defn.path(EVENT_LOG)}",
            "--cpus", f"boot={defn.cpus},affinity={_affinity(cores)}",
            "--memory", f"size={defn.memory_bytes >> 20}M" + (",shared=on" if defn.shares else ""),
            "--serial", f"socket={defn.path(VMM_SERIAL_SOCKET)}", "--console", "off"]
    argv += boot_argv(defn.boot, ("--kernel", "--initramfs", "--cmdline", "--firmware"))
    if defn.disks:
        argv.append("--disk")
        argv += [_disk_option(d.path, d.format, d.readonly, d.backing, i) for i, d in enumerate(defn.disks)]
    if defn.nics:
        if len(nic_fds) != len(defn.nics):
            raise HypervisorError("one open file descriptor per NIC is needed")
        argv.append("--net")
        argv += [f"fd=[{fd}],mac={nic.mac},id=net{i}" for i, (nic, fd) in enumerate(zip(defn.nics, nic_fds))]
    return argv + ch_fs_argv(defn)


def _disk_option(path: str, fmt: str, readonly: bool, backing: bool, index: int) -> str:
    if "," in path:
        raise HypervisorError(f"cloud-hypervisor cannot take a disk path with a comma: {path}")
    option = f"path={path},readonly={'on' if readonly else 'off'},id=disk{index},image_type={fmt}"
    if fmt == "qcow2" and backing:
        option += ",backing_files=on"
    return option


def ch_vm_config(defn: VMDefinition, cores: list[int]) -> dict:
    """The VmConfig body of PUT /vm.create for the same VM as ch_argv.

    Over REST a NIC is named by its tap (cloud-hypervisor opens it); a macvtap's file descriptor can only
    be handed over on the command line or with SCM_RIGHTS, so such NICs are refused here.
    """
    payload: dict = {}
    if defn.boot.kernel:
        payload["kernel"] = defn.boot.kernel
        if defn.boot.initrd:
            payload["initramfs"] = defn.boot.initrd
        if defn.boot.cmdline:
            payload["cmdline"] = defn.boot.cmdline
    else:
        payload["firmware"] = defn.boot.firmware
    config: dict = {
        "cpus": {"boot_vcpus": defn.cpus, "max_vcpus": defn.cpus,
                 "affinity": [{"vcpu": i, "host_cpus": [core]} for i, core in enumerate(cores)]},
        "memory": {"size": defn.memory_bytes, **({"shared": True} if defn.shares else {})},
        "payload": payload,
        "serial": {"mode": "Socket", "socket": defn.path(VMM_SERIAL_SOCKET)},
        "console": {"mode": "Off"},
    }
    if defn.disks:
        config["disks"] = [{"path": d.path, "readonly": d.readonly, "id": f"disk{i}",
                            "image_type": "Qcow2" if d.format == "qcow2" else "Raw",
                            **({"backing_files": True} if d.format == "qcow2" and d.backing else {})}
                           for i, d in enumerate(defn.disks)]
    if defn.nics:
        if any(nic.tap is None for nic in defn.nics):
            raise HypervisorError("macvtap NICs cannot be described in a REST VmConfig; use the command line")
        config["net"] = [{"tap": nic.tap, "mac": nic.mac, "id": f"net{i}"} for i, nic in enumerate(defn.nics)]
    if defn.shares:
        config["fs"] = ch_fs_config(defn)
    return config


class CloudHypervisorAPI:
    """The few endpoints the launcher needs, under http://localhost/api/v1 on the API socket."""

    def __init__(self, socket_path: str, timeout: float = API_TIMEOUT):
        import httpx
        self._client = httpx.Client(transport=httpx.HTTPTransport(uds=socket_path),
                                    base_url="http://localhost/api/v1", timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def _request(self, method: str, endpoint: str, body: dict | None = None, timeout: float | None = None):
        import httpx
        try:
            response = self._client.request(method, f"/{endpoint}", json=body,
                                            **({"timeout": timeout} if timeout is not None else {}))
        except httpx.HTTPError as exc:
            raise HypervisorError(f"cloud-hypervisor API {endpoint}: {exc}") from None
        if response.status_code >= 400:
            raise HypervisorError(f"cloud-hypervisor API {endpoint}: HTTP {response.status_code} {response.text[:200]}")
        return response

    def ping(self) -> dict:
        return self._request("GET", "vmm.ping").json()

    def info(self) -> dict:
        return self._request("GET", "vm.info").json()

    def power_button(self) -> None:
        self._request("PUT", "vm.power-button")

    def shutdown(self) -> None:
        self._request("PUT", "vm.shutdown")

    def shutdown_vmm(self) -> None:
        self._request("PUT", "vmm.shutdown")

    def pause(self) -> None:
        self._request("PUT", "vm.pause")

    def resume(self) -> None:
        self._request("PUT", "vm.resume")

    def snapshot(self, directory: str, timeout: float) -> None:
        """The paused VM's config.json, state.json and memory-ranges into `directory` (which must exist)."""
        self._request("PUT", "vm.snapshot", snapshot_config(directory), timeout=max(timeout, 1.0))


def snapshot_config(directory: str) -> dict:
    """The VmSnapshotConfig body of PUT /vm.snapshot."""
    return {"destination_url": f"file://{directory}"}


class CloudHypervisorRuntime(Runtime):
    hypervisor = "cloud-hypervisor"

    def argv(self, fds: list[int]) -> list[str]:
        return ch_argv(self.defn, self.cores, fds)

    def api(self):
        return CloudHypervisorAPI(self.defn.path(API_SOCKET))

    def after_start(self, deadline: float) -> None:
        from ..hypervisor.serialmux import SerialMux
        self.wait_for_socket(self.defn.path(API_SOCKET), deadline)
        SerialMux(self.defn.path(VMM_SERIAL_SOCKET), self.defn.path(SERIAL_LOG), self.defn.path(SERIAL_SOCKET),
                  max(1.0, deadline - time.monotonic())).start()
        api = self.api()
        try:
            api.ping()
        finally:
            api.close()
        say("vCPUs pinned at start: " + ", ".join(f"vCPU {v} -> core {c}" for v, c in enumerate(self.cores)))

    def power_button(self) -> None:
        api = self.api()
        try:
            api.power_button()
        finally:
            api.close()

    def hard_stop(self) -> None:
        api = self.api()
        try:
            api.shutdown_vmm()
        except HypervisorError:
            pass
        finally:
            api.close()
