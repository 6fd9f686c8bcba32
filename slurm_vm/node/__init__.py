"""Node-side work: the prolog and epilog hooks (root) and the job-step launcher glue (job user)."""
