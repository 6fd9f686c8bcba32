"""Names and limits shared by the CLI, the node hooks and the launcher: spelled once, here.

No imports: every module (disks, networks, hypervisor included) may use it.
"""

from __future__ import annotations

MAX_JOB_ID = 4294967295          # Slurm job ids are uint32
MAX_NICS = 8                     # NICs per VM (names.nic_name has one hex digit for the index)
MAX_VMS_PER_JOB = 2048           # networks.names.derive_mac spends 11 bits on the VM index
# derive_mac's first octet for every local Slurm job id (< 2^26); a spec's static MAC may not start with it
DERIVED_MAC_FIRST_OCTET = 0x02
JOB_NAME_PREFIX = "vm-"          # Slurm job name of a VM job: vm-<spec name>
DEFAULT_CONFIG_PATH = "/etc/slurm-vm/config.yaml"   # the admin config (bin/slurm-vm-prolog spells it too)
CONFIG_ENV = "SLURM_VM_CONFIG"                      # ... or where this variable points

# Files in a job's run dir (<state_dir>/jobs/<job id>/), shared by prolog, launcher, epilog and CLI.
DEFINITION_FILE = "vm.json"
OVERLAY_FILE = "overlay.qcow2"
SEED_FILE = "seed.iso"
SERIAL_LOG = "serial.log"
SERIAL_SOCKET = "serial.sock"    # the serial port, the user's (slurm-vm console attaches here)
VMM_SERIAL_SOCKET = "serial-vmm.sock"  # cloud-hypervisor's own serial socket; the launcher is its one client
CONSOLE_LOCK = "console.lock"
CONTROL_SOCKET = "control.sock"   # the launcher's requests (slurm-vm checkpoint), the user's
# The line a guest prints on its serial console when it is up: cloud-init's final message (set in the
# vendor-data slurm-vm writes); slurm-vm's tiny test guest prints it too. `submit --wait` and `wait` look for it.
GUEST_READY_MARKER = "SLURM-VM-GUEST-READY"    # one interactive console session at a time
VMM_LOG = "vmm.log"
VMM_PID = "vmm.pid"
LAUNCHER_PID = "launcher.pid"
LAUNCHER_LOCK = "launcher.lock"
QMP_SOCKET = "qmp.sock"
VNC_SOCKET = "vnc.sock"           # QEMU's VNC server (password=on; slurm-vm vnc sets a one-time password)
VNC_LOCK = "vnc.lock"             # one `slurm-vm vnc` session per VM
CH_API_SOCKET = "api.sock"
AGENT_SOCKET = "agent.sock"       # QEMU's end of the guest agent's virtio-serial port (the user's)
AGENT_LOCK = "agent.lock"         # one agent conversation at a time (slurm-vm exec, the launcher)
AGENT_CHARDEV = "qga0"            # its chardev id (QMP query-chardev tells whether the guest opened it)
CH_EVENT_LOG = "events.json"
GUARD_VNI = 16777215    # networks/underlay.py: the VNI of the node's VXLAN guard devices; configs may not use it
