"""Slurm's job states as slurm-vm reads them: one definition for the allocator, `node doctor` and the read
commands.

squeue (`%T`, `-O State`) and pyslurm show one word per job: a state flag where one of the flags it knows is
set (COMPLETING, CONFIGURING, RESIZING, REQUEUED, REQUEUE_FED, REQUEUE_HOLD, SPECIAL_EXIT, STOPPED, SIGNALING,
STAGE_OUT, RESV_DEL_HOLD, ...), else the base state (PENDING, RUNNING, SUSPENDED, or one of the endings).
See Slurm's job_state_codes page and job_state_string() in src/common/slurm_protocol_defs.c.
"""

from __future__ import annotations

# The job has (or may still have) resources and slurm-vm objects on its nodes: its prolog may be running
# (CONFIGURING), its VM runs or is held (RUNNING, SUSPENDED, STOPPED), a signal is on its way (SIGNALING), it
# is resized, or it is ending and its epilog may still run (COMPLETING, STAGE_OUT, REQUEUED, REQUEUE_FED: the
# requeue flags are set while the job completes, before it is pending again). Nothing of a job in any of these
# states is a leftover, and what it holds cluster-wide (node/allocate.py) stays held.
LIVE_STATES = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING",
                         "RESIZING", "STAGE_OUT", "REQUEUED", "REQUEUE_FED"})

# The job waits to (re)start and holds nothing on any node: its epilog has run. A requeued and held job may
# wait for days; it chooses its VNIs and addresses anew when it starts.
QUEUED_STATES = frozenset({"PENDING", "REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD"})

# Not ended: the VM runs, will run, or is on its way out. Every other state (COMPLETED, CANCELLED, FAILED,
# TIMEOUT, PREEMPTED, NODE_FAIL, BOOT_FAIL, DEADLINE, OUT_OF_MEMORY, REVOKED) is an ending: PREEMPTED is shown
# once the job's epilog is done (while it runs the job is COMPLETING); a job requeued after preemption goes on
# to REQUEUED and PENDING.
ACTIVE_STATES = LIVE_STATES | QUEUED_STATES

# Waiting to start again, for `checkpoint --list` and `status` ("restores when the job starts"): queued, or
# requeued and on its way back to the queue.
RESTARTING_STATES = QUEUED_STATES | {"REQUEUED", "REQUEUE_FED"}

# Slurm itself has requeued the job (or is about to: a preempted job within its GraceTime), so a requeue by the
# launcher would fail or requeue it twice (slurm/requeue.py).
REQUEUED_STATES = RESTARTING_STATES | {"PREEMPTED"}

# The states sacct's `-s` selects a job by (its base states; sacct prints the first word of State, e.g. CANCELLED
# of "CANCELLED by 4201"). slurm/accounting.py asks for all of them: that changes sacct's window, so that a job
# is listed when it ended in the window, not only when it was eligible to run in it (a VM cancelled while held
# never was). `slurm-vm list --all --state` takes any of them.
SACCT_STATES = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PENDING",
                "PREEMPTED", "REQUEUED", "RESIZING", "RUNNING", "SUSPENDED", "TIMEOUT")
