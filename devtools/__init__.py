"""Developer tooling: the namespace Slurm test cluster, test guests, the demo (not used in production)."""
