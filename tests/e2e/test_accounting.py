"""VM jobs in Slurm's accounting storage (slurmdbd + MariaDB of the session's VM cluster), read with sacct and with
`slurm-vm list --all` / `status`, on both Slurm flavours.

The VM cluster has accounting storage (tests/fixtures/vmcluster.py); `slurm_cluster` has none.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from devtools.accountingdb import AccountingDB
from devtools.vmcluster import REPO, TEST_ROOT, venv_dir

from slurm_vm.errors import EXIT_NOT_FOUND, EXIT_NOT_YOURS, EXIT_USAGE

pytestmark = [pytest.mark.cluster, pytest.mark.both_flavours]

SPEC = "name: {name}\nimage: tiny\ncpus: 1\nmemory: 256M\ndisk: 128M\n"
# Job ids far above the session's: rows copied in the database for jobs slurmctld never knew.
FORGOTTEN_ID = 4100000


def spec(name: str) -> str:
    return SPEC.format(name=name)


def sacct_runs(vc, job: int) -> list[tuple[str, str]]:
    """(state, exit code) of every run of the job, oldest first, as sacct shows them."""
    out = vc.cluster.client(["sacct", "-X", "-D", "-P", "-n", "-j", str(job), "-S", "2000-01-01", "-o",
                             "State,ExitCode"]).stdout
    return [(line.split("|")[0].split(" ")[0], line.split("|")[1]) for line in out.splitlines() if "|" in line]


def batch_exit(vc, job: int) -> str:
    out = vc.cluster.client(["sacct", "-P", "-n", "-j", f"{job}.batch", "-o", "ExitCode"]).stdout.split()
    return out[-1] if out else ""


def history(vc, *args: str, user: str = "svmtest") -> dict[int, dict]:
    proc = vc.slurm_vm("list", "--all", "--json", *args, user=user)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return {r["job_id"]: r for r in json.loads(proc.stdout)}


def start_running(vc, name: str, *sbatch: str) -> int:
    job = vc.submit(spec(name), *sbatch, name=name)
    vc.wait_state(job, {"RUNNING"}, timeout=180)
    vc.wait_serial(vc.job_field(job, "%N"), job, "SLURM-VM-TEST ready", timeout=180)
    return job


def refused_job(vc, name: str) -> int:
    """A spec the node refuses (a volume the user cannot read): the prolog refuses, the launcher exits 7."""
    secret = os.path.join(vc.directory, f"{name}-root-only.img")
    with open(secret, "wb") as fh:
        fh.truncate(1 << 20)
    os.chmod(secret, 0o600)
    return vc.submit(spec(name) + f"volumes:\n  - path: {secret}\n", name=name)


@pytest.mark.guest
def test_stop_scancel_time_limit_and_refusal_end_in_sacct_and_list_all(vm_cluster):
    """One VM per ending, run side by side (the time limit's 2 minutes cover the others)."""
    vc = vm_cluster
    late = vc.submit(spec("acct-late"), "--time=2", name="acct-late")
    refused = refused_job(vc, "acct-refused")
    theirs = vc.submit(spec("acct-theirs"), "--hold", name="acct-theirs", user="svmother")
    vc.cluster.client(["scancel", str(theirs)], user="svmother")
    stopped = start_running(vc, "acct-stop")
    cancelled = start_running(vc, "acct-cancel")
    assert vc.slurm_vm("stop", "acct-stop").returncode == 0
    vc.cluster.client(["scancel", str(cancelled)], user="svmtest")

    # wait_gone_or_ended reads the final state from sacct on this cluster
    assert vc.wait_gone_or_ended(stopped, timeout=120) == "COMPLETED", vc.output(stopped)
    assert vc.wait_gone_or_ended(cancelled, timeout=120) == "CANCELLED", vc.output(cancelled)
    assert vc.wait_gone_or_ended(refused, timeout=120) == "FAILED", vc.output(refused)
    assert vc.wait_gone_or_ended(theirs, timeout=60) == "CANCELLED"
    assert vc.wait_gone_or_ended(late, timeout=300) == "TIMEOUT", vc.output(late)
    out = vc.output(late)
    # the power button before the limit (the guest may not have booted yet on a busy machine: then a hard stop)
    assert out.index("SIGUSR1: pressing the ACPI power button") < out.index("waiting for Slurm to end the job"), out
    assert sacct_runs(vc, stopped) == [("COMPLETED", "0:0")]
    assert sacct_runs(vc, refused) == [("FAILED", "7:0")]
    # the allocation of a cancelled job says 0:0; its batch step has the launcher's 3 (ACPI shutdown on SIGTERM)
    assert sacct_runs(vc, cancelled) == [("CANCELLED", "0:0")]
    assert batch_exit(vc, cancelled) == "3:0" and batch_exit(vc, late) in ("3:0", "4:0")

    mine = history(vc)
    expected = {stopped: "COMPLETED", cancelled: "CANCELLED", refused: "FAILED", late: "TIMEOUT"}
    assert {job: mine[job]["state"] for job in expected if job in mine} == expected, mine
    assert theirs not in mine
    assert mine[stopped]["name"] == "acct-stop" and mine[stopped]["outcome"] == "guest powered off"
    assert mine[refused]["outcome"] == "refused on the node (see the job output)"
    assert mine[stopped]["nodes"] and mine[stopped]["start"] and mine[stopped]["restarts"] == 0
    assert set(history(vc, "--state", "timeout")) & set(expected) == {late}
    others = history(vc, user="svmother")
    assert others[theirs]["state"] == "CANCELLED" and not set(others) & set(expected), others
    table = vc.slurm_vm("list", "--all")
    assert table.stdout.splitlines()[0].split() == ["NAME", "JOBID", "STATE", "START", "ELAPSED", "NODES",
                                                    "RESTARTS", "EXIT", "CHECKPOINTS"], table.stdout
    vc.wait_no_leaks()


def test_a_failed_prolog_is_a_requeued_run_then_the_cancel(vm_cluster):
    """A node fault (the node's state dir has a file where its `trash` dir must be): the prolog fails, Slurm
    drains the node and requeues the job held; sacct has that run REQUEUED, then the held job's CANCELLED.
    No guest boots."""
    vc = vm_cluster
    node = vc.cluster.nodes[-1]
    trash = os.path.join(vc.node_state(node), "trash")
    aside = trash + ".acct-test"
    os.makedirs(os.path.dirname(trash), mode=0o711, exist_ok=True)   # as the prolog makes it
    if os.path.isdir(trash):
        os.rename(trash, aside)
    with open(trash, "w") as fh:
        fh.write("not a directory\n")
    job = None
    try:
        job = vc.submit(spec("acct-pfail"), f"--nodelist={node}", name="acct-pfail")
        deadline = time.monotonic() + 120
        while "held" not in vc.job_field(job, "%r") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "launch failed requeued held" in vc.job_field(job, "%r"), vc.job_field(job, "%T %r")
        # Cancelled before slurmctld recorded the held job's new run, the cancel would not reach the database.
        while [state for state, _ in sacct_runs(vc, job)] != ["REQUEUED", "PENDING"]:
            assert time.monotonic() < deadline, sacct_runs(vc, job)
            time.sleep(0.5)
    finally:
        os.unlink(trash)
        if os.path.isdir(aside):
            os.rename(aside, trash)
        vc.cluster.client(["scontrol", "update", f"nodename={node}", "state=resume"])
        if job is not None:
            vc.cluster.client(["scancel", str(job)])
    assert vc.wait_gone_or_ended(job, timeout=60) == "CANCELLED"
    assert [state for state, _ in sacct_runs(vc, job)] == ["REQUEUED", "CANCELLED"]
    record = history(vc)[job]
    assert (record["state"], record["restarts"], record["earlier_runs"]) == ("CANCELLED", 1, ["REQUEUED"]), record


def test_status_and_list_of_a_vm_slurmctld_forgot(vm_cluster):
    """A VM job that ended 40 days ago: slurmctld never knew its id (a copy of a real job's row in the database,
    moved back in time); status and list --all --since read it through sacct and slurmdbd."""
    vc = vm_cluster
    job = vc.submit(spec("acct-old"), "--hold", name="acct-old")
    vc.cluster.client(["scancel", str(job)], user="svmtest")
    assert vc.wait_gone_or_ended(job, timeout=60) == "CANCELLED"
    forgotten = FORGOTTEN_ID + job
    AccountingDB(vc.cluster).copy_job(job, [forgotten], name="vm-acct-ancient", days_ago=40)
    assert vc.job_field(forgotten, "%T") == ""       # slurmctld does not know it

    for ref in (str(forgotten), "acct-ancient"):
        proc = vc.slurm_vm("status", ref, "--json")
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert (data["job_id"], data["name"], data["state"], data["source"]) == \
            (forgotten, "acct-ancient", "CANCELLED", "accounting"), data
    text = vc.slurm_vm("status", "acct-ancient")
    assert "State:       CANCELLED" in text.stdout and "from Slurm's accounting" in text.stdout, text.stdout
    theirs = vc.slurm_vm("status", str(forgotten), user="svmother")
    assert theirs.returncode == EXIT_NOT_YOURS and "of user svmtest: not your VM" in theirs.stderr, theirs
    nobody = vc.slurm_vm("status", "acct-never-was")
    assert nobody.returncode == EXIT_NOT_FOUND and "no VM named 'acct-never-was'" in nobody.stderr, nobody

    assert forgotten not in history(vc)                     # the default window is 30 days
    assert history(vc, "--since", "60d")[forgotten]["state"] == "CANCELLED"
    assert forgotten not in history(vc, "--since", "60d", user="svmother")
    bad = vc.slurm_vm("list", "--all", "--since", "last tuesday")
    assert bad.returncode == EXIT_USAGE and bad.stderr.strip().startswith("slurm-vm: --since: "), bad
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


@pytest.fixture(scope="session")
def plain_cluster(cluster_factory):
    """One node, no hooks, no accounting storage; it sees the checkout and the VM clusters' configs (TEST_ROOT)."""
    from tests.fixtures.cluster import cluster_name, flavour
    return cluster_factory(cluster_name("noacct" + flavour().replace(".", "")), hooks="none", nodes_count=1,
                           venv=venv_dir(), bind=[REPO, TEST_ROOT])


def test_without_accounting_list_all_and_status_say_so_in_one_line(vm_cluster, plain_cluster):
    """A cluster without accounting storage: list --all shows what slurmctld knows, after one line."""
    vc, slurm_cluster = vm_cluster, plain_cluster
    path = os.path.join(vc.directory, "specs", "acct-noacct.yaml")
    with open(path, "w") as fh:
        fh.write(spec("acct-noacct"))
    os.chmod(path, 0o644)
    slurm_vm = os.path.join(venv_dir(), "bin", "slurm-vm")
    env = {"SLURM_VM_CONFIG": vc.config_path}

    def run(*args: str):
        return slurm_cluster.client([slurm_vm, *args], user="svmtest", env=env)

    submitted = run("submit", "--parsable", path, "--hold", "--output=/dev/null")
    assert submitted.returncode == 0, submitted.stderr
    job = int(submitted.stdout.strip())
    try:
        listing = run("list", "--all", "--json")
        assert listing.returncode == 0, listing.stderr
        assert listing.stderr.strip().splitlines() == [
            "slurm-vm: this cluster keeps no job accounting (sacct: accounting storage is disabled); showing the "
            "VMs slurmctld still knows, which forgets ended ones after a while"], listing.stderr
        assert {r["job_id"]: r["state"] for r in json.loads(listing.stdout)}[job] == "PENDING"
        gone = run("status", "999999")
        assert gone.returncode == EXIT_NOT_FOUND and len(gone.stderr.strip().splitlines()) == 1, gone
        assert "this cluster keeps no job accounting" in gone.stderr, gone.stderr
    finally:
        slurm_cluster.client(["scancel", str(job)])
