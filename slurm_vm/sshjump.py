"""`slurm-vm ssh` and `slurm-vm scp`: ssh to a VM from the login node, jumping through the VM's node.

The VM's network is usually not routed to the login node, so ssh gets a ProxyCommand that opens the TCP
connection on the VM's node, inside the user's job: `srun --jobid=J --overlap … slurm-vm tcp-relay %h %p`
(no nc needed on the node). The address is the one slurm-vm gave the VM (the spec's static address).
Host keys are remembered per job (HostKeyAlias=slurm-vm-job<J>): addresses are reused by later VMs with
other keys. The user's own `-o` options come first, so they win.
"""

from __future__ import annotations

import os
import selectors
import shlex
import socket
import sys
from typing import Callable

from .errors import NotFound, SlurmVmError
from .lifecycle import record_of, spec_of_job
from .slurm import JobInfo
from .slurm.srun import srun_in_job

CONNECT_TIMEOUT = 20.0


def vm_address(job: JobInfo, managed: tuple[str, ...] = (), networks: dict | None = None,
               ask_guest: Callable[[], tuple[str, ...]] | None = None) -> str:
    """The spec's static address, else one slurm-vm handed out (`managed`: lifecycle.managed_addresses); with
    the config's `networks`, only an address on a network the VM's node can reach (a bridge). A VM with none
    (a DHCP NIC): the first address its guest agent reports (`ask_guest`), IPv4 first. That address is only
    where the user's own relay connects, as the user, inside the user's job: nothing is granted by it."""
    record = record_of(job, managed)
    if not record.addresses:
        reported = guest_choice(ask_guest() if ask_guest is not None else ())
        if reported is not None:
            return reported
        raise NotFound(f"VM {job.vm_name} has no address slurm-vm knows and its guest agent reports none: give "
                       "its NIC a static `address` in the spec, or install qemu-guest-agent in the guest")
    if networks is None:
        return record.addresses[0]
    where = {address: network_of(job, address, networks) for address in record.addresses}
    reachable = [a for a, (_, kind) in where.items() if kind in ("bridge", "")]
    if reachable:
        return reachable[0]
    named = ", ".join(f"{a} on {kind} network {name!r}" for a, (name, kind) in where.items())
    raise NotFound(f"VM {job.vm_name} has no address its node can reach ({named}: the node has no address on "
                   "job-private segments and cannot talk to its own macvtap guests): use `slurm-vm console "
                   f"{job.vm_name}`, or give the VM a NIC on a bridge network")


def guest_choice(reported: tuple[str, ...]) -> str | None:
    """The address to ssh to among a guest's reported `address/prefix` strings: the first IPv4, else the first."""
    import ipaddress
    plain = [r.split("/")[0] for r in reported]
    for address in plain:
        try:
            if ipaddress.ip_address(address).version == 4:
                return address
        except ValueError:
            continue
    valid = [a for a in plain if _is_address(a)]
    return valid[0] if valid else None


def _is_address(text: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def network_of(job: JobInfo, address: str, networks: dict) -> tuple[str, str]:
    """(network name, how the node sees it: bridge | macvtap | job-private | vxlan) of one of the VM's addresses;
    ("", "") when the config does not say."""
    import ipaddress
    spec = spec_of_job(job)
    names = [n.network for n in spec.networks if n.address and n.address.split("/")[0] == address] if spec else []
    ip = ipaddress.ip_address(address)
    names += [name for name, net in networks.items() if net.subnet and ip in ipaddress.ip_network(net.subnet)]
    for name in names:
        net = networks.get(name)
        if net is not None:
            private = net.kind == "vxlan" and net.vni_range is not None
            return name, "job-private" if private else net.kind
    return "", ""


def proxy_command(job: JobInfo, node: str, slurm_vm_command: str) -> str:
    argv = srun_in_job(job.job_id, node, [slurm_vm_command, "tcp-relay"], unbuffered=True)
    return " ".join(shlex.quote(a) for a in argv) + " %h %p"


def jump_options(job: JobInfo, node: str, slurm_vm_command: str) -> list[str]:
    return ["-o", f"ProxyCommand={proxy_command(job, node, slurm_vm_command)}",
            "-o", f"HostKeyAlias=slurm-vm-job{job.job_id}"]


def ssh_command(job: JobInfo, node: str, slurm_vm_command: str, login: str | None,
                extra: tuple[str, ...], managed: tuple[str, ...] = (), networks: dict | None = None,
                ask_guest: Callable[[], tuple[str, ...]] | None = None) -> list[str]:
    address = vm_address(job, managed, networks, ask_guest)
    target = f"{login}@{address}" if login else address
    options, command = split_ssh_args(extra)
    return ["ssh", *options, *jump_options(job, node, slurm_vm_command), target, *command]


SSH_FLAGS_WITH_VALUE = set("BbcDEeFIiJLlmOoPpQRSWw")


def split_ssh_args(args: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(ssh options, remote command): options end at the first word that is neither an option nor an
    option's value, or after `--`."""
    options: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return options, list(args[i + 1:])
        if not arg.startswith("-") or arg == "-":
            break
        options.append(arg)
        if len(arg) == 2 and arg[1] in SSH_FLAGS_WITH_VALUE and i + 1 < len(args):
            options.append(args[i + 1])
            i += 1
        i += 1
    return options, list(args[i:])


def scp_command(args: tuple[str, ...], resolve, managed_of=lambda job: (), networks: dict | None = None,
                guest_of=None) -> list[str]:
    """scp with `[user@]VM:path` operands; `resolve(name) -> (job, node, slurm_vm_command)`. One VM per call.
    `managed_of(job)`: the addresses slurm-vm handed out to the job (lifecycle.managed_addresses); `guest_of(job)`:
    a callable asking the guest's agent, for a VM without either (vm_address)."""
    out: list[str] = []
    seen: dict[str, tuple] = {}
    for arg in args:
        host, sep, path = arg.partition(":")
        if arg.startswith("-") or not sep or "/" in host:
            out.append(arg)
            continue
        user, at, name = host.rpartition("@")
        if name not in seen:
            seen[name] = resolve(name)
        job = seen[name][0]
        address = vm_address(job, managed_of(job), networks, guest_of(job) if guest_of is not None else None)
        out.append(f"{user}{at}{f'[{address}]' if ':' in address else address}:{path}")
    if len(seen) != 1:
        raise SlurmVmError("name exactly one VM as NAME:path (or user@NAME:path) in the scp arguments"
                           if not seen else "scp between two VMs is not supported: copy through your machine")
    job, node, command = next(iter(seen.values()))
    return ["scp", *jump_options(job, node, command), *out]


# --- node side: the ProxyCommand's end ---------------------------------------------------------------

def tcp_relay(host: str, port: int, stdin: int = 0, stdout: int = 1) -> int:
    """Copy stdin -> TCP (host, port) -> stdout until the connection ends."""
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        print(f"slurm-vm tcp-relay: cannot connect to {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    sock.settimeout(None)
    pipe_socket(sock, stdin, stdout)
    return 0


def pipe_socket(sock: socket.socket, stdin: int, stdout: int) -> None:
    """Copy stdin -> sock -> stdout until the socket's end closes (also used by `slurm-vm vnc`'s node relay);
    closes the socket."""
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "net")
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "in":
                    data = os.read(stdin, 65536)
                    if data:
                        sock.sendall(data)
                    else:
                        sel.unregister(stdin)
                        sock.shutdown(socket.SHUT_WR)
                else:
                    data = sock.recv(65536)
                    if not data:
                        return
                    view = memoryview(data)
                    while view:
                        view = view[os.write(stdout, view):]
    finally:
        sock.close()
