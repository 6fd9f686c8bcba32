"""A Slurm cluster made of Linux namespaces on one machine, for slurm-vm's tests and demo.

Each node is a slurmd in its own network, mount and UTS namespace (hostname = node name), joined
to a per-cluster bridge by a veth pair; slurmctld and munged run in the root network namespace with
their own directories. All state lives under /var/lib/slurm-vm-testcluster/<name>/; nothing is
written to /etc/slurm. Slurm is configured the way slurm-vm is deployed: proctrack/cgroup,
task/cgroup+affinity with ConstrainCores and ConstrainRAMSpace, cons_tres with CR_Core_Memory,
PrologFlags=Alloc,Contain,DeferBatch.

Flavours: `22.05` runs the host's Debian 12 Slurm; `24.11` runs Debian trixie's Slurm from a
debootstrapped root filesystem (cached under /var/cache/slurm-vm/), chrooted inside each namespace.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass, field

from .accountingdb import AccountingDB, ports as accounting_ports, slurm_conf_lines as accounting_conf

q = shlex.quote   # every value spliced into a shell line goes through this
BASE_DIR = "/var/lib/slurm-vm-testcluster"
MUNGE_USER = "munge"
TEST_USERS = (("svmtest", 4201), ("svmother", 4202))
NODE_CPUS = 2
NODE_MEMORY_MB = 4096
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


class ClusterError(Exception):
    pass


def _run(argv: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _alive(pid: int) -> bool:
    """Running (a zombie child of ours is reaped and counts as gone)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def ensure_test_users() -> None:
    for name, uid in TEST_USERS:
        if _run(["id", "-u", name], check=False).returncode != 0:
            _run(["useradd", "-M", "-s", "/bin/sh", "-u", str(uid), name])
        home = pwd.getpwnam(name).pw_dir
        if not os.path.isdir(home):   # `testcluster client` falls back to the user's home
            os.makedirs(home, mode=0o755)
            os.chown(home, uid, uid)


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


@dataclass
class Cluster:
    name: str = "tc"
    slurm: str = "22.05"
    nodes_count: int = 3
    hooks: str = "record"            # none | record | slurm-vm | dirs (Prolog=hooks/prolog.d/*, a site's 10-record)
    venv: str | None = None          # for hooks=slurm-vm: where slurm-vm-prolog/epilog live
    slurm_vm_config: str | None = None
    bind: list[str] = field(default_factory=list)
    kill_wait: int = 10
    hook_timing: bool = False        # benchmarks: each hook's wall time goes to hook-records/<hook>.times
    preempt_grace: int | None = None  # a partition `urgent` that preempts `main` (PreemptMode=REQUEUE, GraceTime)
    accounting: bool = False         # slurmdbd with a MariaDB of its own (devtools.accountingdb)
    partitions: tuple = ()           # more partitions of every node beside `main` (the demo's `vm`: the README's)

    def __post_init__(self) -> None:
        if self.slurm not in ("22.05", "24.11"):
            raise ClusterError(f"unknown Slurm flavour {self.slurm}; use 22.05 or 24.11")
        if not self.name.replace("-", "").isalnum() or len(self.name) > 20:
            raise ClusterError("cluster names are 1-20 letters, digits or '-'")
        h = _digest(self.name)
        self.dir = os.path.join(BASE_DIR, self.name)
        self.subnet = f"10.{200 + h % 50}.{(h >> 8) % 250}"
        self.bridge = f"tcbr{h % 100000}"
        self.ctl_port = 20000 + (h >> 20) % 20000
        self.db_port, self.dbd_port = accounting_ports(h)
        self.rootfs = rootfs_path() if self.slurm == "24.11" else None

    # --- names ---------------------------------------------------------------------------------------
    @property
    def nodes(self) -> list[str]:
        return [f"{self.name}-n{i}" for i in range(1, self.nodes_count + 1)]

    def netns(self, node: str) -> str:
        return f"tc-{node}"

    def node_ip(self, node: str) -> str:
        return f"{self.subnet}.{10 + self.nodes.index(node) + 1}"

    @property
    def ctl_ip(self) -> str:
        return f"{self.subnet}.1"

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    @property
    def conf(self) -> str:
        return self.path("etc", "slurm.conf")

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": self.conf}

    # --- commands ------------------------------------------------------------------------------------
    def _as_user(self, argv: list[str], user: str | None) -> list[str]:
        if user is None:
            return argv
        return ["runuser", "-u", user, "--", *argv]

    @property
    def client_env(self) -> dict[str, str]:
        """Clients find `slurm-vm` (the venv's bin is last on PATH) and its config without being told."""
        path = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" + (f":{self.venv}/bin" if self.venv else "")
        extra = {"SLURM_VM_CONFIG": self.slurm_vm_config} if self.slurm_vm_config else {}
        return {"PATH": path, "LANG": "C.UTF-8", **self.env, **extra}

    def client(self, argv: list[str], user: str | None = None, env: dict[str, str] | None = None,
               timeout: float = 60, cwd: str = "/", input: str | None = None) -> subprocess.CompletedProcess:
        """A Slurm client command (or slurm-vm) as `user`, against this cluster, from the root namespace (with
        `input` on its standard input)."""
        full_env = {**self.client_env, **(env or {})}
        command = ["env", *[f"{k}={v}" for k, v in full_env.items()], *argv]
        if self.rootfs:
            shared = any(cwd == b or cwd.startswith(b.rstrip("/") + "/") for b in self._binds())
            inside = cwd if shared or os.path.isdir(self.rootfs + cwd) else "/"
            return self._in_rootfs_ns(None, self._as_user(command, user), timeout, inside, input)
        return subprocess.run(self._as_user(command, user), capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=cwd, input=input)

    def client_argv(self, argv: list[str], user: str | None = None, env: dict[str, str] | None = None) -> list[str]:
        """The full command line `client` runs (for a caller that needs its own terminal, e.g. pexpect)."""
        full_env = {**self.client_env, **(env or {})}
        command = self._as_user(["env", *[f"{k}={v}" for k, v in full_env.items()], *argv], user)
        if self.rootfs:
            pid = self._read_pid("ctl.mntpid")
            if pid is None:
                raise ClusterError(f"cluster {self.name} is not up")
            return ["nsenter", f"--target={pid}", "--mount", "--uts", "--net", "--root", "--wdns=/", *command]
        return command

    def node_exec(self, node: str, argv: list[str], user: str | None = None,
                  timeout: float = 60) -> subprocess.CompletedProcess:
        """A command inside a node's network namespace (and root filesystem, for 24.11)."""
        if node not in self.nodes:
            raise ClusterError(f"no node {node} in cluster {self.name}")
        command = self._as_user(argv, user)
        if self.rootfs:
            return self._in_rootfs_ns(node, command, timeout)
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.netns(node)}", *command], capture_output=True,
                              text=True, timeout=timeout, check=False, cwd="/")

    def _in_rootfs_ns(self, node: str | None, argv: list[str], timeout: float,
                      cwd: str = "/", input: str | None = None) -> subprocess.CompletedProcess:
        pid = self._read_pid(f"{node}.mntpid" if node else "ctl.mntpid")
        if pid is None:
            raise ClusterError(f"cluster {self.name} is not up")
        ns = ["nsenter", f"--target={pid}", "--mount", "--uts", "--net", "--root", f"--wdns={cwd}"]
        return subprocess.run([*ns, *argv], capture_output=True, text=True, timeout=timeout, check=False, input=input)

    # --- lifecycle -----------------------------------------------------------------------------------
    def up(self) -> None:
        """Start (or finish starting) the cluster; a running cluster is left as it is."""
        if self.is_up():
            return
        self.down()
        taken = self._subnet_users()
        if taken:
            raise ClusterError(f"subnet {self.subnet}.0/24 of cluster {self.name} is in use by {', '.join(taken)} "
                               "(another test cluster whose name hashes to it): choose another name")
        ensure_test_users()
        if self.rootfs:
            ensure_rootfs(self.venv, self.bind)
        for sub in ("etc", "munge", "ctl", "log", *self.nodes):
            os.makedirs(self.path(sub), exist_ok=True)
        os.chmod(self.dir, 0o755)
        os.chmod(self.path("etc"), 0o755)
        self._write_munge_key()
        self._write_hooks()
        self._write_conf()
        self._make_tun_node()
        self._network_up()
        self._start_munged()
        if self.accounting:
            AccountingDB(self).start()
        self._start_slurmctld()
        registration = AccountingDB(self).register() if self.accounting else None
        for node in self.nodes:
            self._start_slurmd(node)
        self._wait_idle()
        if registration is not None:
            AccountingDB(self).finish_registration(registration)

    def is_up(self) -> bool:
        if not os.path.exists(self.path("state.json")):
            return False
        daemons = ("munged.pid", "slurmctld.pid", *(("mariadb.pid", "slurmdbd.pid") if self.accounting else ()))
        pids = [self._read_pid(n) for n in (*daemons, *[f"{n}.pid" for n in self.nodes])]
        if not all(pid and os.path.exists(f"/proc/{pid}") for pid in pids):
            return False
        proc = self.client(["sinfo", "-h", "-o", "%T"], timeout=20)
        return proc.returncode == 0 and proc.stdout.strip() != ""

    def _read_pid(self, name: str) -> int | None:
        try:
            with open(self.path("ctl", name)) as fh:
                text = fh.read().strip()
            return int(text) if text.isdigit() else None
        except FileNotFoundError:
            return None

    def _write_pid(self, name: str, pid: int) -> None:
        with open(self.path("ctl", name), "w") as fh:
            fh.write(f"{pid}\n")

    def _write_munge_key(self) -> None:
        key = self.path("munge", "munge.key")
        if not os.path.exists(key):
            with open(key, "wb") as fh:
                fh.write(os.urandom(1024))
        munge = _run(["id", "-u", MUNGE_USER]).stdout.strip()
        group = _run(["id", "-g", MUNGE_USER]).stdout.strip()
        for path in (self.path("munge"), key):
            os.chown(path, int(munge), int(group))
        os.chmod(key, 0o400)
        os.chmod(self.path("munge"), 0o755)

    def _write_hooks(self) -> None:
        hooks = self.path("hooks")
        os.makedirs(hooks, exist_ok=True)
        os.makedirs(self.path("hook-records"), exist_ok=True)
        os.chmod(hooks, 0o755)
        for which in ("prolog", "epilog"):
            path = os.path.join(hooks, which)
            if self.hooks == "dirs":   # a site's hook dirs: callers add their own entries next to 10-record
                os.makedirs(os.path.join(hooks, f"{which}.d"), mode=0o755, exist_ok=True)
                path = os.path.join(hooks, f"{which}.d", "10-record")
            if self.hooks in ("record", "dirs"):
                body = (f'out={q(self.path("hook-records"))}/{which}.${{SLURM_JOB_ID}}.${{SLURMD_NODENAME}}\n'
                        'env | grep -E "^(SLURM|SLURMD)_" | sort > "$out.tmp"\n'
                        'echo "HOOK_UID=$(id -u)" >> "$out.tmp"\nmv "$out.tmp" "$out"\n')
            elif self.hooks == "slurm-vm":
                if not self.venv or not self.slurm_vm_config:
                    raise ClusterError("hooks=slurm-vm needs venv and slurm_vm_config")
                # As the admin guide's wrapper: the venv's shell entry starts Python for VM work only.
                body = (f"export SLURM_VM_CONFIG={q(self.slurm_vm_config)}\n"
                        f"exec {q(os.path.join(self.venv, 'bin', 'slurm-vm-' + which))}\n")
            else:
                body = "exit 0\n"
            if self.hook_timing:
                times = self.path("hook-records", f"{which}.times")
                body = (f"start=$(date +%s%N)\n( {body.replace(chr(10), '; ').rstrip('; ')} )\nrc=$?\n"
                        f'echo "$SLURM_JOB_ID $SLURMD_NODENAME $(( $(date +%s%N) - start ))" >> {q(times)}\nexit $rc\n')
            with open(path, "w") as fh:
                fh.write("#!/bin/sh\n# generated by devtools.testcluster\n" + body)
            os.chmod(path, 0o755)

    def _write_conf(self) -> None:
        spool = self.path("%n", "spool")
        lines = [
            f"ClusterName={self.name.replace('-', '')}",
            f"SlurmctldHost={self.name}-ctl({self.ctl_ip})",
            f"SlurmctldPort={self.ctl_port}",
            "SlurmdPort=6818",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.path('munge', 'munge.socket')}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={self.path('ctl', 'state')}",
            f"SlurmdSpoolDir={spool}",
            f"SlurmctldPidFile={self.path('ctl', 'slurmctld.daemon.pid')}",
            f"SlurmdPidFile={self.path('%n', 'slurmd.daemon.pid')}",
            f"SlurmctldLogFile={self.path('log', 'slurmctld.log')}",
            f"SlurmdLogFile={self.path('log', 'slurmd-%n.log')}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/cgroup",
            "TaskPlugin=task/cgroup,task/affinity",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "PrologFlags=Alloc,Contain,DeferBatch",
            *self._hook_lines(),
            f"KillWait={self.kill_wait}",
            "MinJobAge=600",
            "ReturnToService=2",
            "MessageTimeout=20",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "JobAcctGatherType=jobacct_gather/none",
            *accounting_conf(self),
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "SchedulerType=sched/backfill",
            *[f"NodeName={node} NodeAddr={self.node_ip(node)} NodeHostname={node} CPUs={NODE_CPUS} Sockets=1 "
              f"CoresPerSocket={NODE_CPUS} ThreadsPerCore=1 RealMemory={NODE_MEMORY_MB} State=UNKNOWN"
              for node in self.nodes],
            *self._partitions(),
        ]
        with open(self.conf, "w") as fh:
            fh.write("# generated by devtools.testcluster\n" + "\n".join(lines) + "\n")
        with open(self.path("etc", "cgroup.conf"), "w") as fh:
            fh.write("CgroupAutomount=yes\nConstrainCores=yes\nConstrainRAMSpace=yes\nConstrainDevices=no\n")
        os.makedirs(self.path("ctl", "state"), exist_ok=True)
        for node in self.nodes:
            os.makedirs(self.path(node, "spool"), exist_ok=True)
        for name in ("slurm.conf", "cgroup.conf"):
            os.chmod(self.path("etc", name), 0o644)

    def _hook_lines(self) -> list[str]:
        if self.hooks == "dirs":   # slurmd runs every file of the glob (in reverse alphabetical order)
            return [f"Prolog={self.path('hooks', 'prolog.d', '*')}", f"Epilog={self.path('hooks', 'epilog.d', '*')}"]
        return [f"Prolog={self.path('hooks', 'prolog')}", f"Epilog={self.path('hooks', 'epilog')}"]

    def _partitions(self) -> list[str]:
        main = "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
        tier = "" if self.preempt_grace is None else f" PriorityTier=1 GraceTime={self.preempt_grace}"
        more = [f"PartitionName={name} Nodes=ALL MaxTime=INFINITE State=UP{tier}" for name in self.partitions]
        if self.preempt_grace is None:
            return [main, *more]
        # Jobs of `urgent` (higher PriorityTier) preempt jobs of `main`: SIGTERM, GraceTime, then requeue.
        # send_user_signal: the job's --signal (slurm-vm's USR1) at the start of the GraceTime instead of a SIGTERM,
        # so that a checkpoint has the whole GraceTime. 22.05 reads it from SlurmctldParameters only (not
        # SchedulerParameters: there it is ignored and the job gets nothing until the GraceTime ends).
        user_signal = "PreemptParameters=send_user_signal" if self.slurm != "22.05" else \
            "SlurmctldParameters=preempt_send_user_signal"
        return ["PreemptType=preempt/partition_prio", "PreemptMode=REQUEUE", user_signal,
                f"{main}{tier}", *more,
                "PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF"]

    def _make_tun_node(self) -> None:
        """A world-usable /dev/net/tun for the nodes (bind-mounted in their mount namespaces only)."""
        path = self.path("tun")
        if not os.path.exists(path):
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(10, 200))
        os.chmod(path, 0o666)

    def _subnet_users(self) -> list[str]:
        """Interfaces of the root namespace with an address in this cluster's subnet (another cluster's bridge
        whose name hashes to the same subnet): sharing it would break both clusters' routing silently."""
        links = json.loads(_run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
        return [link["ifname"] for link in links
                if any(a.get("local", "").startswith(self.subnet + ".") for a in link.get("addr_info", []))]

    def _network_up(self) -> None:
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.ctl_ip}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for i, node in enumerate(self.nodes, 1):
            ns, host_end = self.netns(node), f"{self.bridge[:9]}v{i}"
            _run(["ip", "netns", "add", ns])
            _run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns])
            _run(["ip", "link", "set", host_end, "master", self.bridge, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.node_ip(node)}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        with open(self.path("state.json"), "w") as fh:
            json.dump({"bridge": self.bridge, "nodes": self.nodes, "slurm": self.slurm}, fh)
        with open(self.path("settings.json"), "w") as fh:
            json.dump({"name": self.name, "slurm": self.slurm, "nodes_count": self.nodes_count, "hooks": self.hooks,
                       "venv": self.venv, "slurm_vm_config": self.slurm_vm_config, "bind": self.bind,
                       "kill_wait": self.kill_wait, "hook_timing": self.hook_timing,
                       "preempt_grace": self.preempt_grace, "accounting": self.accounting,
                       "partitions": list(self.partitions)}, fh)

    def _spawn(self, argv: list[str], log: str, pid_name: str, env: dict[str, str] | None = None) -> int:
        with open(self.path("log", log), "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True,
                                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})}, cwd="/")
        self._write_pid(pid_name, proc.pid)
        return proc.pid

    def _start_munged(self) -> None:
        munge = self.path("munge")
        argv = ["runuser", "-u", MUNGE_USER, "--", "munged", "-F", f"--socket={munge}/munge.socket",
                f"--key-file={munge}/munge.key", f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
                f"--seed-file={munge}/munged.seed"]
        self._spawn(argv, "munged.out", "munged.pid")
        self._wait_for(lambda: os.path.exists(f"{munge}/munge.socket"), "munged socket")

    def _binds(self) -> list[str]:
        """Host paths the 24.11 rootfs sees at the same place (the venv is the rootfs's own). /home and /tmp
        are shared like a cluster's shared filesystem, so a client's working directory exists on the nodes."""
        return [self.dir, *self.bind, *(p for p in ("/home", "/tmp") if os.path.isdir(p))]

    def _start_slurmctld(self) -> None:
        # Its own UTS namespace: slurmctld insists that the hostname is SlurmctldHost's.
        setup = f'hostname {q(self.name + "-ctl")} && exec "$@"'
        if self.rootfs:
            setup = f"{rootfs_mounts(self.rootfs, self._binds())} && hostname {q(self.name + '-ctl')} && " + \
                chroot_exec(self.rootfs)
        argv = ["unshare", "--mount", "--uts", "--propagation", "private", "--", "sh", "-c", setup, "sh",
                "slurmctld", "-D", "-i", "-f", self.conf]
        pid = self._spawn(argv, "slurmctld.out", "slurmctld.pid", self.env)
        self._write_pid("ctl.mntpid", pid)
        self._wait_for(lambda: self.client(["scontrol", "ping"], timeout=10).returncode == 0, "slurmctld")

    def _start_slurmd(self, node: str) -> None:
        if self.rootfs:
            setup = f"{rootfs_mounts(self.rootfs, self._binds(), self.path('tun'))} && hostname {q(node)} && " + \
                chroot_exec(self.rootfs)
        else:
            setup = f'hostname {q(node)} && mount --bind {q(self.path("tun"))} /dev/net/tun && exec "$@"'
        argv = ["nsenter", f"--net=/run/netns/{self.netns(node)}", "unshare", "--mount", "--uts",
                "--propagation", "private", "--", "sh", "-c", setup, "sh",
                "slurmd", "-D", "-N", node, "-f", self.conf]
        pid = self._spawn(argv, f"slurmd-{node}.out", f"{node}.pid", self.env)
        self._write_pid(f"{node}.mntpid", pid)

    def _wait_for(self, predicate, what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise ClusterError(f"{what} did not come up within {timeout:.0f}s; see {self.path('log')}")

    def _wait_idle(self) -> None:
        def idle() -> bool:
            out = self.client(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=10).stdout.split()
            states = dict(zip(out[::2], out[1::2]))
            return all(states.get(n, "").startswith("idle") for n in self.nodes)
        self._wait_for(idle, "the nodes (idle state)")

    def status(self) -> str:
        if not os.path.exists(self.path("state.json")):
            return f"cluster {self.name}: down"
        proc = self.client(["sinfo", "-N", "-o", "%N %T %C %m"], timeout=20)
        return f"cluster {self.name} (Slurm {self.slurm}), SLURM_CONF={self.conf}\n" + (proc.stdout or proc.stderr)

    def wait_job(self, job_id: int, states: set[str], timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.client(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T"], timeout=20).stdout.strip()
            if state in states:
                return state
            time.sleep(0.3)
        raise ClusterError(f"job {job_id} is {state or 'unknown'}, not one of {sorted(states)}, after {timeout}s")

    def down(self) -> None:
        """Stop everything and remove every trace; safe after a crash, a half `up`, or twice."""
        if os.path.exists(self.path("ctl", "slurmctld.pid")):
            self._cancel_jobs()
        for node in self.nodes:
            self._stop_pid(f"{node}.pid")
        self._stop_pid("slurmctld.pid")
        AccountingDB(self).stop()
        self._stop_pid("munged.pid")
        self._kill_leftover_processes()
        for node in self.nodes:
            _run(["ip", "netns", "del", self.netns(node)], check=False)
        _run(["ip", "link", "del", self.bridge], check=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(self._links_left()):
            time.sleep(0.1)
        self._remove_cgroups()
        shutil.rmtree(self.dir, ignore_errors=True)
        self._forget_hook_cache()

    def _forget_hook_cache(self) -> None:
        """The hooks' root-only config cache and state-dir hint for this cluster's slurm-vm config."""
        from slurm_vm.node.configcache import PICKLE_SUFFIX, SETTINGS_SUFFIX, STATE_DIR_SUFFIX, cache_base
        base = cache_base(self.slurm_vm_config) if self.slurm_vm_config else None
        for suffix in (PICKLE_SUFFIX, SETTINGS_SUFFIX, STATE_DIR_SUFFIX) if base else ():
            try:
                os.unlink(base + suffix)
            except FileNotFoundError:
                pass

    def _cancel_jobs(self) -> None:
        if self.client(["scontrol", "ping"], timeout=10).returncode != 0:
            return
        self.client(["scancel", "--full", "--partition=main"], timeout=20)
        if self.preempt_grace is not None:
            self.client(["scancel", "--full", "--partition=urgent"], timeout=20)
        deadline = time.monotonic() + self.kill_wait + 30
        while time.monotonic() < deadline:
            out = self.client(["squeue", "-h", "-o", "%i"], timeout=10).stdout.strip()
            if not out:
                return
            time.sleep(0.5)

    def _stop_pid(self, name: str) -> None:
        pid = self._read_pid(name)
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT / 4
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _kill_leftover_processes(self) -> None:
        """Processes that name this cluster's dir (daemons, hooks, job steps) after the daemons stopped."""
        for _ in range(20):
            pids = self._processes()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    def _processes(self) -> list[int]:
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmdline = fh.read().decode("utf-8", "replace")
            except OSError:
                continue
            if self.dir + "/" in cmdline or self.dir + "\x00" in cmdline:
                out.append(int(entry))
        return out

    def _links_left(self) -> list[str]:
        out = _run(["ip", "-o", "link", "show"], check=False).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
                if line.split(":")[1].strip().startswith(self.bridge[:9])]

    def _remove_cgroups(self) -> None:
        root = "/sys/fs/cgroup"
        for controller in os.listdir(root) if os.path.isdir(root) else []:
            for node in self.nodes:
                top = os.path.join(root, controller, f"slurm_{node}")
                if os.path.isdir(top):
                    for dirpath, _, _ in sorted(os.walk(top), key=lambda t: -len(t[0])):
                        try:
                            os.rmdir(dirpath)
                        except OSError:
                            pass

    def leaks(self) -> list[str]:
        """What `down` must not leave: processes, namespaces, links, mounts, cgroup dirs, the state dir."""
        found = [f"process {pid}" for pid in self._processes()]
        netns = _run(["ip", "netns", "list"], check=False).stdout
        found += [f"netns {n}" for n in (self.netns(node) for node in self.nodes) if n in netns]
        found += [f"link {name}" for name in self._links_left()]
        with open("/proc/self/mountinfo") as fh:
            found += [f"mount {line.split()[4]}" for line in fh if self.dir in line]
        for controller in os.listdir("/sys/fs/cgroup"):
            found += [f"cgroup {controller}/slurm_{node}" for node in self.nodes
                      if os.path.isdir(os.path.join("/sys/fs/cgroup", controller, f"slurm_{node}"))]
        if os.path.exists(self.dir):
            found.append(f"dir {self.dir}")
        if self.accounting:
            found += AccountingDB(self).leaks()
        return found


# --- the 24.11 flavour: a debootstrapped trixie root filesystem ------------------------------------------

ROOTFS_PACKAGES = ["munge", "slurmctld", "slurmd", "slurm-client", "slurmdbd", "python3", "python3-venv",
                   "qemu-system-x86", "qemu-utils", "iproute2", "iputils-ping", "util-linux", "procps", "ca-certificates",
                   "nftables", "busybox", "openssh-client"]
# SLURM_VM_TEST_ROOTFS_CACHE: a rootfs cache of one's own (while trying a new package list beside others' runs)
ROOTFS_CACHE = os.environ.get("SLURM_VM_TEST_ROOTFS_CACHE", "/var/cache/slurm-vm")


def rootfs_recipe() -> str:
    return hashlib.sha256(("trixie:" + ",".join(ROOTFS_PACKAGES)).encode()).hexdigest()[:12]


def rootfs_path() -> str:
    return os.path.join(ROOTFS_CACHE, f"rootfs-trixie-{rootfs_recipe()}")


def rootfs_lock_path(root: str) -> str:
    """A dot file beside the rootfs: `rootfs-trixie-*` globs (tools, people) must find only root filesystems."""
    return os.path.join(os.path.dirname(root), f".{os.path.basename(root)}.lock")


def ensure_rootfs(venv: str | None, binds: list[str]) -> str:
    """Build the trixie rootfs once (cached by recipe); install the project's venv inside when asked.
    Under a lock: parallel test workers (xdist) and sessions bring 24.11 clusters up at the same time."""
    root = rootfs_path()
    os.makedirs(ROOTFS_CACHE, exist_ok=True)
    with open(rootfs_lock_path(root), "w") as lock:   # per recipe: another recipe's debootstrap holds none up
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(root, ".complete")):
            shutil.rmtree(root, ignore_errors=True)
            _run(["debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}", "trixie", root],
                 timeout=1800)
            open(os.path.join(root, ".complete"), "w").close()
        if venv:
            ensure_rootfs_venv(root, venv)
    return root


def ensure_rootfs_venv(root: str, venv: str) -> None:
    """The same venv path inside the rootfs, built with trixie's Python from the same checkout (editable)."""
    project = _project_dir()
    stamp = os.path.join(root, venv.lstrip("/"), ".svm-project")
    if os.path.exists(stamp) and open(stamp).read() == project:
        return
    pip = q(os.path.join(venv, "bin", "pip"))
    script = (f"set -e; python3 -m venv {q(venv)}; {pip} install -q --upgrade pip >/dev/null; "
              f"{pip} install -q -e {q(project)}; echo -n {q(project)} > {q(os.path.join(venv, '.svm-project'))}")
    _run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
          rootfs_mounts(root, [project], resolv=True) + " && " + chroot_exec(root), "sh", "sh", "-c", script],
         timeout=900)


def _project_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def chroot_exec(root: str) -> str:
    return f'exec chroot {q(root)} /usr/bin/env "$@"'


def rootfs_mounts(root: str, binds: list[str], tun: str | None = None, resolv: bool = False) -> str:
    """Shell steps that, inside a private mount namespace, bind into the rootfs what it needs."""
    def inside(path: str) -> str:
        return q(root + path)

    # The rootfs is made a mount point of its own first: inside the chroot, tools that change the
    # propagation of `/` (unshare --propagation private, as the macvtap sysfs lookup does) need one.
    steps = [f"mount --bind {q(root)} {q(root)}",
             f"mount --rbind /proc {inside('/proc')}", f"mount --rbind /sys {inside('/sys')}",
             f"mount --rbind /dev {inside('/dev')}", f"mount --bind /etc/passwd {inside('/etc/passwd')}",
             f"mount --bind /etc/group {inside('/etc/group')}", f"mkdir -p {inside('/run/netns')}"]
    if resolv:   # for pip inside the rootfs: the host's resolver and CA bundle (registry proxies)
        steps.append(f"cp /etc/resolv.conf {inside('/etc/resolv.conf')}")
        steps.append(f"mount --bind /etc/ssl/certs {inside('/etc/ssl/certs')}")
    for path in sorted(set(binds)):
        steps.append(f"mkdir -p {inside(path)} && mount --bind {q(path)} {inside(path)}")
    if tun:
        steps.append(f"mount --bind {q(tun)} {inside('/dev/net/tun')}")
    return " && ".join(steps)
