#!/usr/bin/env bash
# cifar_jax launcher: creates .venv when missing, installs the project into it, then runs
#   ./launch.sh <experiment> [--flag=value ...]   an experiment, e.g. lr_sweep, lr_schedule, grid_study
#   ./launch.sh test [pytest args ...]            the test suite, a worker per core and one more, up to 4 (-m "not slow"
#                                                 skips the slow ones; CIFAR_JAX_TEST_WORKERS=0: no workers)
#   ./launch.sh list                              every experiment with its purpose and flagfiles
#   ./launch.sh setup                             only create/update the environment
# Environment: CIFAR_JAX_VENV (default .venv), PYTHON (default python3), CIFAR_JAX_DATA_DIR,
# CIFAR_JAX_TEST_WORKERS.
#
# Multi-host (jax.distributed): start the same command on every machine, with a shared
# --results_dir, the coordinator's address and each machine's index; each process trains its
# share of every group's runs and process 0 writes the summary once all runs are done:
#   machine 0: CIFAR_JAX_COORDINATOR=host0:12345 CIFAR_JAX_NUM_PROCESSES=2 CIFAR_JAX_PROCESS_ID=0 ./launch.sh lr_sweep ...
#   machine 1: CIFAR_JAX_COORDINATOR=host0:12345 CIFAR_JAX_NUM_PROCESSES=2 CIFAR_JAX_PROCESS_ID=1 ./launch.sh lr_sweep ...
# (or the flags --coordinator_address, --num_processes, --process_id). A process that sees no sign of
# another for --host_timeout seconds (default 120) stops with one line (exit 3): rerun on the hosts left.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
venv=${CIFAR_JAX_VENV:-.venv}
python=${PYTHON:-python3}

if [ $# -eq 0 ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  echo
  "$python" -m experiments
  exit 2
fi
command=$1
shift
case "$command" in
  setup|test) ;;
  list) exec "$python" -m experiments ;;  # reads the files only: needs no environment
  *) if ! grep -qs '^if __name__ == "__main__":' "experiments/$command.py"; then
       echo "launch.sh: no experiment '$command'; available: $(cd experiments && grep -l '^if __name__ == "__main__":' [a-z]*.py | sed 's/\.py$//' | tr '\n' ' ')" >&2
       exit 2
     fi ;;
esac
if [ ! -x "$venv/bin/python" ]; then
  echo "launch.sh: creating $venv with $($python --version 2>&1)" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.cifar_jax-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "launch.sh: installing cifar_jax and its dependencies into $venv" >&2
  log="$venv/install.log"
  if ! { "$venv/bin/python" -m pip install --upgrade pip && "$venv/bin/python" -m pip install -e ".[dev]"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "launch.sh: installation failed; full log in $log" >&2
    exit 1
  fi
  touch "$stamp"
fi

case "$command" in
  setup) echo "launch.sh: environment ready in $venv" >&2 ;;
  test) # one pytest worker per core and one more, at most 4 (the tests are mostly compilation and
        # study subprocesses, each single-threaded, and a worker waiting on a subprocess or a sleep
        # leaves its core idle: on 2 cores, 2 workers kept 1.6 of them busy); CIFAR_JAX_TEST_WORKERS
        # overrides, 0 runs in-process
        cores=$(nproc 2>/dev/null || echo 1)
        workers=${CIFAR_JAX_TEST_WORKERS:-$(( cores + 1 < 4 ? cores + 1 : 4 ))}
        exec "$venv/bin/python" -m pytest -n "$workers" --dist worksteal "$@" ;;
  *) exec "$venv/bin/python" -m "experiments.$command" "$@" ;;
esac
