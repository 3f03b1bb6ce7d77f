"""Training: one run's step and evaluation, the group runner, optimisers, schedules, in-step instruments, loss surfaces."""
