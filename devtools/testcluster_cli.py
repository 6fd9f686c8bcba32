"""Command line of scripts/testcluster (thin: the work is in testcluster.Cluster)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .clientdir import client_workdir
from .testcluster import Cluster, ClusterError


def _cluster_from_state(name: str) -> Cluster:
    """A running cluster's settings come from its state (so `exec`/`client`/`down` need only the name)."""
    from .testcluster import BASE_DIR
    path = os.path.join(BASE_DIR, name, "settings.json")
    if os.path.exists(path):
        with open(path) as fh:
            return Cluster(**json.load(fh))
    return Cluster(name)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="testcluster")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up")
    up.add_argument("--name", default="tc")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--slurm", default="22.05", choices=["22.05", "24.11"])
    up.add_argument("--hooks", default="record", choices=["none", "record", "slurm-vm", "dirs"])
    up.add_argument("--venv")
    up.add_argument("--slurm-vm-config")
    up.add_argument("--bind", action="append", default=[])
    up.add_argument("--kill-wait", type=int, default=10)
    up.add_argument("--preempt-grace", type=int, default=None,
                    help="add a partition `urgent` that preempts `main` (PreemptMode=REQUEUE, GraceTime=N)")
    up.add_argument("--accounting", action="store_true",
                    help="slurmdbd with a MariaDB of its own (AccountingStorageType=accounting_storage/slurmdbd)")
    for name in ("down", "status"):
        sub.add_parser(name).add_argument("--name", default="tc")
    ex = sub.add_parser("exec")
    ex.add_argument("--name", default="tc")
    ex.add_argument("node")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    cl = sub.add_parser("client")
    cl.add_argument("--name", default="tc")
    cl.add_argument("--user")
    cl.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("testcluster: run as root", file=sys.stderr)
        return 2
    try:
        if args.command == "up":
            cluster = Cluster(args.name, args.slurm, args.nodes, args.hooks, args.venv, args.slurm_vm_config,
                              args.bind, args.kill_wait, preempt_grace=args.preempt_grace, accounting=args.accounting)
            cluster.up()
            print(cluster.status())
            return 0
        cluster = _cluster_from_state(args.name)
        if args.command == "down":
            cluster.down()
            return 0
        if args.command == "status":
            print(cluster.status())
            return 0
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if args.command == "exec":
            proc = cluster.node_exec(args.node, cmd, timeout=3600)
        else:
            proc = cluster.client(cmd, user=args.user, timeout=3600, cwd=client_workdir(args.user, os.getcwd()))
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        return proc.returncode
    except ClusterError as exc:
        print(f"testcluster: {exc}", file=sys.stderr)
        return 1
