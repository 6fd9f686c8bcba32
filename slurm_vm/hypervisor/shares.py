"""Host directories in the guest: virtio-9p (QEMU built in) or virtio-fs (one virtiofsd per share).

Both run with the job user's rights and nothing more: QEMU already runs as the user, and virtiofsd
runs as the user inside a user namespace that maps only the user's own uid (to 0, which the daemon
needs for its sandbox). Whatever the guest's root asks for, the host kernel checks it against the
job user's credentials, and every file the guest creates belongs to the job user.

The daemons are the launcher's children: in the job's cgroup, on the same cores as the VMM's non-vCPU
threads (cores.io_cores: the step's spare cores, else all of them), killed by the launcher when the VMM
ends and by PR_SET_PDEATHSIG if the launcher dies; the epilog kills a leftover one (its command line
names the job dir). Debian 12's virtiofsd drops supplementary groups at start, which an unprivileged
user namespace forbids: nogroupdrop.py makes that call a no-op.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from ..errors import HypervisorError
from .definition import VMDefinition
from .nogroupdrop import installer

VIRTIOFS_SOCKET = "virtiofs{index}.sock"
NINEP_MSIZE = 512000        # the largest msize a 6.1 guest's virtio transport takes
VIRTIOFS_QUEUE = 1024
PR_SET_PDEATHSIG = 1
UNSHARE = "/usr/bin/unshare"


def guest_fstype(transport: str) -> str:
    return "9p" if transport == "9p" else "virtiofs"


def guest_mount_options(transport: str, readonly: bool) -> str:
    """Options for the guest's fstab / mount(8); `nofail` so a missing share never blocks the boot."""
    options = [f"trans=virtio,version=9p2000.L,msize={NINEP_MSIZE},cache=mmap"] if transport == "9p" else []
    options += ["ro" if readonly else "rw", "nofail"]
    return ",".join(options)


def socket_path(defn: VMDefinition, index: int) -> str:
    return defn.path(VIRTIOFS_SOCKET.format(index=index))


def qemu_share_argv(defn: VMDefinition, transport: str) -> list[str]:
    """QEMU options for every share; virtio-fs also needs guest RAM in a shared memfd."""
    argv: list[str] = []
    if not defn.shares:
        return argv
    if transport == "virtiofs":
        argv += ["-object", f"memory-backend-memfd,id=mem,size={defn.memory_bytes >> 20}M,share=on",
                 "-numa", "node,memdev=mem"]
    for i, share in enumerate(defn.shares):
        if transport == "9p":
            readonly = ",readonly=on" if share.readonly else ""
            argv += ["-fsdev", f"local,id=fs{i},path={share.path},security_model=none{readonly}",
                     "-device", f"virtio-9p-pci,fsdev=fs{i},mount_tag={share.tag}"]
        else:
            argv += ["-chardev", f"socket,id=vfs{i},path={socket_path(defn, i)}",
                     "-device", f"vhost-user-fs-pci,chardev=vfs{i},tag={share.tag},queue-size={VIRTIOFS_QUEUE}"]
    return argv


def ch_fs_argv(defn: VMDefinition) -> list[str]:
    if not defn.shares:
        return []
    return ["--fs", *[f"tag={share.tag},socket={socket_path(defn, i)},num_queues=1,queue_size={VIRTIOFS_QUEUE},"
                      f"id=fs{i}" for i, share in enumerate(defn.shares)]]


def ch_fs_config(defn: VMDefinition) -> list[dict]:
    return [{"tag": share.tag, "socket": socket_path(defn, i), "num_queues": 1, "queue_size": VIRTIOFS_QUEUE,
             "id": f"fs{i}"} for i, share in enumerate(defn.shares)]


def virtiofsd_argv(defn: VMDefinition, index: int) -> list[str]:
    """virtiofsd as the job user in a new user namespace (uid 0 inside = the user outside, nothing else mapped).

    In the namespace's own mount table a small tmpfs covers /run (Debian 12's C virtiofsd insists on a
    lock file in /run/virtiofsd) and a read-only share is bind-mounted read-only (that virtiofsd has no
    read-only option). The path is passed as an argument, never interpolated into the script.
    """
    share = defn.shares[index]
    daemon = [defn.virtiofsd_binary, f"--socket-path={socket_path(defn, index)}", "-o", f"source={share.path}",
              "-o", "cache=auto", "-o", "sandbox=namespace", "-o", "no_posix_lock", "-o", "no_xattr",
              "--rlimit-nofile=0"]
    return [UNSHARE, "--user", "--map-root-user", "--mount", "--propagation", "private", "--",
            "/bin/sh", "-c", WRAPPER, "virtiofsd", share.path, "ro" if share.readonly else "rw", *daemon]


WRAPPER = ('mount -t tmpfs -o size=1m,mode=0700 svm-virtiofsd /run || exit 1; '
           'if [ "$2" = ro ]; then mount -o bind,ro -- "$1" "$1" || exit 1; fi; shift 2; exec "$@"')


def _daemon_preexec(cores: list[int]):
    """A preexec_fn: the child runs on `cores` (the VMM's non-vCPU cores; [] leaves its affinity alone),
    gets SIGKILL when its parent dies, and setgroups(2) is a no-op for it (nogroupdrop.py: virtiofsd would
    exit in the user namespace otherwise). ctypes is loaded here, before the fork (and not at import: the
    prolog imports this module for the guest mount options only)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    install_filter = installer(libc)
    wanted = set(cores)

    def preexec() -> None:
        if wanted:
            os.sched_setaffinity(0, wanted)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        err = install_filter()
        if err:
            raise OSError(err, os.strerror(err))
    return preexec


class ShareDaemons:
    """The virtiofsd processes of one VM."""

    def __init__(self, defn: VMDefinition, log_path: str, cores: list[int] | None = None):
        self.defn, self.log_path, self.cores = defn, log_path, cores or []
        self.procs: list[subprocess.Popen] = []

    def start(self, deadline: float) -> None:
        preexec = _daemon_preexec(self.cores)
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            for i in range(len(self.defn.shares)):
                try:
                    os.unlink(socket_path(self.defn, i))
                except FileNotFoundError:
                    pass
                try:
                    self.procs.append(subprocess.Popen(virtiofsd_argv(self.defn, i), stdin=subprocess.DEVNULL,
                                                       stdout=log, stderr=log, close_fds=True,
                                                       preexec_fn=preexec))
                except OSError as exc:
                    raise HypervisorError(f"cannot run virtiofsd: {exc.strerror}") from None
                except subprocess.SubprocessError as exc:     # the seccomp filter could not be installed
                    raise HypervisorError(f"cannot prepare virtiofsd's process: {exc}") from None
        finally:
            os.close(log)
        for i, proc in enumerate(self.procs):
            while not os.path.exists(socket_path(self.defn, i)):
                if proc.poll() is not None:
                    raise HypervisorError(f"virtiofsd for {self.defn.shares[i].path} exited (status "
                                          f"{proc.returncode}); see vmm.log")
                if time.monotonic() > deadline:
                    raise HypervisorError("virtiofsd did not open its socket in time")
                time.sleep(0.02)

    def stop(self) -> None:
        import subprocess
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
