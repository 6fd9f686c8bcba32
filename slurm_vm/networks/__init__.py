"""Networks for VMs: taps on bridges, macvtaps on parent interfaces, VXLAN segments (netlink via pyroute2).

Independent of slurm-vm's spec and config: functions take plain arguments.
"""
