"""The README's main job: a real VM through real Slurm on the namespace test cluster."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from .testcluster import Cluster
from .vmcluster import KILL_WAIT, SetupError, setup_node_bridges, venv_dir, write_test_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# SLURM_VM_TEST_PREFIX (the tests' cluster prefix) keeps a test run's demo off a demo someone left running.
CLUSTER_NAME = os.environ.get("SLURM_VM_TEST_PREFIX", "") + "demo"
DEMO_DIR = f"/var/lib/slurm-vm-{CLUSTER_NAME}"
USER = "svmtest"
EXAMPLE = os.path.join(REPO, "etc", "examples", "tiny.yaml")
PREEMPT_GRACE = 60   # partition `urgent` preempts `main` (requeue) with this GraceTime: try checkpoints


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def show(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    sys.stdout.flush()
    return proc


def try_commands(cluster_name: str = CLUSTER_NAME, user: str = USER) -> list[str]:
    """Commands to paste after `scripts/demo --keep`: absolute paths, the cluster's name, the venv if not the
    default one (scripts/testcluster re-executes itself with $SLURM_VM_VENV)."""
    tool = os.path.join(REPO, "scripts", "testcluster")
    venv = venv_dir()
    prefix = "" if venv == "/opt/slurm-vm/venv" else f"SLURM_VM_VENV={venv} "
    client = f"{prefix}{tool} client --name {cluster_name} --user {user} --"
    return [f"{client} slurm-vm list", f"{client} slurm-vm status tiny", f"{client} slurm-vm console tiny",
            f"{client} slurm-vm stop tiny", f"{prefix}{tool} down --name {cluster_name}"]


def prepare_dirs() -> tuple[str, str]:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    state = os.path.join(DEMO_DIR, "state")
    for sub in ("state", "out"):
        os.makedirs(os.path.join(DEMO_DIR, sub))
    os.chmod(DEMO_DIR, 0o755)
    os.chmod(os.path.join(DEMO_DIR, "out"), 0o1777)
    return DEMO_DIR, state


def add_readme_names(config_path: str) -> None:
    """The README's spec names image `debian12` and partition `vm`: the demo has both (the image once the Debian
    test guest is built: scripts/build-test-guests --only debian), so its commands run as written."""
    import yaml
    with open(config_path) as fh:
        config = yaml.safe_load(fh)
    if "debian" in config["images"]:
        config["images"]["debian12"] = dict(config["images"]["debian"], login_user="debian",
                                            description="Debian 12 with cloud-init (the README's image)")
    # `lan` hands out addresses (the README's VM names none and the demo has no DHCP server), so that
    # `slurm-vm ssh` reaches it; tiny.yaml's static 10.77.0.10 lies outside the range
    config["networks"]["lan"].update(subnet="10.77.0.0/24", address_range=["10.77.0.100", "10.77.0.199"])
    with open(config_path, "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave the cluster and the VM running")
    args = parser.parse_args(argv)
    directory, state = prepare_dirs()
    try:
        config = write_test_config(directory, state, underlay="eth0")
    except SetupError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    add_readme_names(config)
    say("starting a 3-node Slurm cluster in network namespaces, Prolog/Epilog = slurm-vm's")
    cluster = Cluster(CLUSTER_NAME, slurm="22.05", nodes_count=3, hooks="slurm-vm", venv=venv_dir(),
                      slurm_vm_config=config, bind=[REPO, directory], kill_wait=KILL_WAIT,
                      preempt_grace=PREEMPT_GRACE, accounting=True, partitions=("vm",))
    cluster.up()
    setup_node_bridges(cluster, config)
    env = {"SLURM_VM_CONFIG": config}
    slurm_vm = os.path.join(venv_dir(), "bin", "slurm-vm")
    try:
        say(f"slurm-vm submit {os.path.relpath(EXAMPLE, REPO)} --wait   (as user {USER})")
        print(open(EXAMPLE).read())
        started = time.monotonic()
        proc = show(cluster.client([slurm_vm, "submit", EXAMPLE, f"--output={directory}/out/%j.out", "--wait",
                                    "--wait-for", "SLURM-VM-TEST ready", "--timeout", "180"],
                                   user=USER, env=env, timeout=240))
        if proc.returncode != 0:
            return 1
        print(f"(ready {time.monotonic() - started:.1f}s after submission)")
        say("squeue: it is an ordinary Slurm job")
        show(cluster.client(["squeue", "-o", "%.8i %.12j %.9u %.8T %.6D %.4C %N"]))
        say("slurm-vm list")
        show(cluster.client([slurm_vm, "list"], user=USER, env=env))
        say("slurm-vm status tiny")
        show(cluster.client([slurm_vm, "status", "tiny", "--lines", "8"], user=USER, env=env))
        node = cluster.client(["squeue", "-h", "-u", USER, "-n", "vm-tiny", "-o", "%N"]).stdout.strip()
        say(f"ping the guest from its node {node}")
        show(cluster.node_exec(node, ["ping", "-c", "2", "10.77.0.10"], timeout=30))
        if args.keep:
            say("left running. Try:")
            for line in try_commands():
                print(f"  {line}")
            return 0
        say("slurm-vm stop tiny   (ACPI power button; the job ends COMPLETED)")
        show(cluster.client([slurm_vm, "stop", "tiny"], user=USER, env=env))
        job = cluster.client(["squeue", "-h", "-t", "all", "-u", USER, "-n", "vm-tiny", "-o", "%i"]).stdout.split()
        deadline = time.monotonic() + 60
        state = ""
        while job and time.monotonic() < deadline:
            state = cluster.client(["squeue", "-h", "-t", "all", "-j", job[0], "-o", "%T"]).stdout.strip()
            if state not in ("RUNNING", "COMPLETING"):
                break
            time.sleep(0.5)
        print(f"job {job[0] if job else '?'}: {state}")
        if job:
            say("the job's output file")
            with open(os.path.join(directory, "out", f"{job[0]}.out"), errors="replace") as fh:
                print(fh.read())
        return 0 if state == "COMPLETED" else 1
    finally:
        if not args.keep:
            say("tearing the cluster down")
            cluster.down()


if __name__ == "__main__":
    sys.exit(main())
