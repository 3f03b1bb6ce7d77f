"""Progress output of long work: a line on stdout, flushed so it shows up in the logs of long runs."""


def log(message: str) -> None:
    """Print one progress line now."""
    print(message, flush=True)


def duration(seconds: float) -> str:
    """A duration as 1h05m or 4m07s."""
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"
