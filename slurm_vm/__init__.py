"""slurm-vm: run virtual machines as Slurm jobs."""

__version__ = "0.1.0"
