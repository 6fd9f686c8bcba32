"""python -m slurm_vm.launcher VM.JSON: run a VM definition in the foreground (tests, debugging)."""

import sys

from ..errors import SlurmVmError
from ..hypervisor.definition import VMDefinition
from .launcher import ExitCode, run, say


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m slurm_vm.launcher VM.JSON", file=sys.stderr)
        return 2
    try:
        with open(sys.argv[1]) as fh:
            return run(VMDefinition.from_json(fh.read()))
    except (SlurmVmError, OSError) as exc:
        say(str(exc))
        return int(ExitCode.REFUSED)


sys.exit(main())
