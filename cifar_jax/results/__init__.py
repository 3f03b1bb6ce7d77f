"""What runs leave: the run record, the study directory and its lock, statistics across seeds, DataFrames, TensorBoard."""
