"""What train.py, sample.py and evaluate.py share: a mistake is reported as its message.

facediff's checks raise ValueError subclasses (ConfigError, CheckpointError, UnsafeValueError,
ResumeError) and FileNotFoundError / NotADirectoryError whose message already names the bad
value and the fix. Left to Hydra, each came after a 10-20 line traceback that a newcomer reads
as a crash. `reported_errors` logs the message alone (to the console and the job's log file)
and exits with status 1; `HYDRA_FULL_ERROR=1` shows the traceback, as Hydra's own hint says.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("facediff")

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError)
R = TypeVar("R")


def reported_errors(job: Callable[..., R]) -> Callable[..., R]:
    """Wrap a Hydra task function: a USER_ERRORS exception becomes its message and exit code 1."""

    @functools.wraps(job)
    def run(*args: object, **kwargs: object) -> R:
        try:
            return job(*args, **kwargs)
        except USER_ERRORS as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            log.error(
                "%s\n(%s; set HYDRA_FULL_ERROR=1 to see the traceback)", err, type(err).__name__
            )
            sys.exit(1)

    return run
