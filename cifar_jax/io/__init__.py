"""Files that outlive a process: atomic writes and strict JSON, mid-run snapshots, checkpoints, the environment."""
