"""The command line of every experiment: flags and flagfiles into one checked `Config`, the
experiment called with it, one-line errors for bad input, SIGTERM/SIGINT as a clean stop that
keeps every finished epoch, a lost host of a multi-host study as one line, and `--helpfull`
trimmed to the project's flags."""
from __future__ import annotations

import errno
from pathlib import Path
import signal
import sys
from types import ModuleType
from typing import Any, Callable, Sequence

from absl import app, flags, logging
import jax

from cifar_jax.config.options import Option
from cifar_jax.data import datasets
from cifar_jax.io import files
from cifar_jax.study import config, hosts, prepare, progress
from cifar_jax.study.config import Config, ConfigError

HOST_LOST = 3  # exit status when another process of a multi-host study was lost (bad input: 2)


def show_project_flags(fl: flags.FlagValues = flags.FLAGS, main_module: str | None = None) -> None:
    """Make every project flag (defined in cifar_jax.* or experiments.*: the core flags of
    cifar_jax.study.config and those of shared experiment modules) a key flag of the main module
    (absl names it by its path, sys.argv[0]), so --help lists them beside the experiment's own.
    --helpfull (`full_help`) lists every flag under the module that defines it."""
    main_module = main_module or sys.argv[0]
    for module, defined in fl.flags_by_module_dict().items():
        if _is_project(module) and module != main_module:
            for flag in defined:
                fl.register_key_flag_for_module(main_module, flag)


def _is_project(module: str) -> bool:
    return module.startswith(("cifar_jax.", "experiments."))


def full_help(fl: flags.FlagValues = flags.FLAGS) -> str:
    """--helpfull: absl's listing of every flag by the module that defines it, regrouped so that the
    project's modules (the experiment, cifar_jax.*, experiments.*) come apart from absl's own."""
    blocks: list[list[str]] = []
    for line in fl.get_help().splitlines():
        if line and not line[0].isspace() and line.endswith(":"):  # a module's heading
            blocks.append([])
        if blocks:
            blocks[-1].append(line)
    main_module = sys.argv[0]
    project = [b for b in blocks if b[0][:-1] == main_module or _is_project(b[0][:-1])]
    other = [b for b in blocks if b not in project]
    parts = ["Project flags (the experiment's own, then the core and shared ones):\n"]
    parts += ["\n".join(b).rstrip() + "\n" for b in project]
    parts += ["Library flags (absl's own: flag files, logging, debugging):\n"] if other else []
    parts += ["\n".join(b).rstrip() + "\n" for b in other]
    return "\n".join(parts)


def main(experiment: Callable[[Config], Any], own: dict[str, Option] | None = None) -> None:
    """The entry point of an experiment (`own`: its options table): define the core flags and its
    own on absl's FLAGS, validate, run; bad input → one line, exit 2; Ctrl-C → one line, exit
    130, and SIGTERM → one line, exit 143 (see `run_checked`)."""
    config.define_flags(flags.FLAGS, own)
    show_project_flags()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    app.run(lambda argv: run_checked(argv, experiment, flags.FLAGS, own), flags_parser=parse_flags)


def run_args(experiment: ModuleType, args: Sequence[str]) -> None:
    """An experiment module (its `main` and `OPTIONS`) run in this process from command-line flags
    (flagfiles included), on flags of its own: what its entry point does, without absl's app,
    global flags or signal handlers, so that a notebook, a script or a test can run several.
    Bad input → one line on stderr, SystemExit(2)."""
    own = getattr(experiment, "OPTIONS", None)
    fv = flags.FlagValues()
    config.define_flags(fv, own)
    run_checked(parse_flags(["experiment", *args], fv), experiment.main, fv, own)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that every cleanup on the way out runs."""


_SIGNALLED: list[int] = []  # the stop signals received: a JAX host callback (progress inside a
#                            compiled epoch) turns the exception raised below into a JaxRuntimeError


def _stop(signum: int, frame: Any) -> None:
    _SIGNALLED.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def parse_flags(argv: list[str], fl: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl's flag parsing, with a malformed or unknown flag as one line, exit 2 (absl's own: two
    lines, exit 1); --helpfull prints `full_help` (exit 0)."""
    if any(arg in ("--helpfull", "-helpfull") for arg in argv[1:]):
        print(full_help(fl))
        sys.exit(0)
    try:
        return fl(argv)
    except flags.Error as err:
        _fail(str(err))
    except UnicodeDecodeError as err:  # absl reads flag files as UTF-8 text: a damaged one
        _fail(f"--flagfile={_undecodable_flagfile(argv)}: not text ({err.reason} at byte {err.start}): "
              "a damaged flag file; the study's flags.txt lists the flags it ran with")


def _undecodable_flagfile(argv: list[str]) -> str:
    """The first --flagfile of `argv` that is not UTF-8 text (`?` when none is: a nested one)."""
    for arg in argv:
        if arg.startswith(("--flagfile=", "-flagfile=")):
            path = arg.split("=", 1)[1]
            try:
                Path(path).expanduser().read_text(encoding="utf-8")
            except UnicodeDecodeError:
                return path
            except OSError:
                continue
    return "?"


def checked_config(argv: list[str], fl: Any, own: dict[str, Option] | None = None) -> Config:
    """The validated flags `fl` (the core options and the experiment's `own`), with every check
    that needs no data: values, output folder, dataset name; one-line ConfigError/DataError."""
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {' '.join(argv[1:])!r} (flags need the --name=value form)")
    cfg = config.from_flags(fl, own)
    prepare.check_writable(cfg.results_dir, "--results_dir")
    if cfg.name:
        prepare.check_writable(Path(cfg.results_dir).expanduser() / cfg.name, "--name")
    datasets.check_name(cfg.dataset, cfg.data_dir)
    return cfg


def run_checked(argv: list[str], experiment: Callable[[Config], Any], fl: Any,
                own: dict[str, Option] | None = None) -> None:
    """Validate the flags (`checked_config`), set up JAX and run `experiment(cfg)`. Bad input or
    a full disk → one line, exit 2; another process of a multi-host study lost → one line, exit 3
    (HOST_LOST); Ctrl-C or SIGTERM → one line saying what is kept and how to resume, exit 130 or
    143, instead of a traceback."""
    logging.set_verbosity(logging.WARNING)  # keep backend-probing chatter out of the progress output
    cfg = None
    try:
        cfg = checked_config(argv, fl, own)
        if cfg.compile_cache and not jax.config.jax_compilation_cache_dir:  # else set already: by
            # $JAX_COMPILATION_CACHE_DIR or by an earlier study of this process (the cache is process-wide)
            jax.config.update("jax_compilation_cache_dir", str(Path(cfg.compile_cache).expanduser()))
            # every program: on 2 CPU cores most of a study's programs compile in under JAX's default 1 s
            # (none of the lr_sweep smoke preset's was kept), and a study has few programs
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        address, count, index = cfg.distributed
        if count > 1:
            jax.distributed.initialize(address, count, index)  # every process there, each its index
            jax.devices()  # the backend holds every process's devices and index from here on
            # the processes coordinate through the study's files (runner, hosts), so JAX's client is
            # shut down: it would abort a survivor with a native dump when another process is lost
            jax.distributed.shutdown()
            hosts.start(cfg.results_dir, address, count, index, cfg.host_timeout)
            progress.log(f"process {index} of {count} (coordinator {address}), local devices {jax.local_devices()}")
        experiment(cfg)
    except (ConfigError, datasets.DataError, files.ResultsError) as err:
        _fail(str(err))
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise
        _fail(f"{err.filename or 'writing'}: {err.strerror}; fix that and run the same command again to resume")
    except hosts.HostLost as lost:
        print(f"error: process {lost.index} of {lost.count} stopped: no sign of it for {lost.silent_s:.0f} s "
              f"(--host_timeout); every finished epoch is saved under {cfg.results_dir}; to resume, run the same "
              "command on the hosts that remain (on one: --num_processes=1)", file=sys.stderr, flush=True)
        sys.exit(HOST_LOST)
    except KeyboardInterrupt as err:
        _interrupted(isinstance(err, Terminated), cfg)
    except jax.errors.JaxRuntimeError:
        if not _SIGNALLED:
            raise
        _interrupted(_SIGNALLED[0] == signal.SIGTERM, cfg)


def _interrupted(terminated: bool, cfg: Config | None) -> None:
    """One line for Ctrl-C (exit 130) or SIGTERM (exit 143): what is kept and how to resume."""
    what = "terminated (SIGTERM)" if terminated else "interrupted (Ctrl-C)"
    kept = (f"every finished epoch is saved under {cfg.results_dir}; run the same command again to resume"
            if cfg else "nothing was written")
    print(f"{what}: {kept}", file=sys.stderr, flush=True)
    sys.exit(143 if terminated else 130)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)
