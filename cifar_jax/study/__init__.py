"""Studies: the typed config and its run grid, data preparation, the runner, run records as they train, the command line."""
