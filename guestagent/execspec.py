"""What an exec asks for and how it ended: ``ExecSpec``, ``ExitStatus``, ``Stream``, errors.

These are plain values for the wire protocol's side: a spec that fails its checks
raises ``ExecStartError`` (the protocol reports it as OPEN_FAILED with ``reason``),
just like a missing binary, a bad working directory or an unknown user found later
by ``start_exec``.
"""

from __future__ import annotations

import enum
import math
import re
import signal as _signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from common.proto import guestinfo as gi
from guestagent.reaper import ExitStatus as ReapedStatus

MAX_WINSIZE = 0xFFFF  # struct winsize fields are unsigned short
_USER_RE = re.compile(r"[^:\x00]+(?::[^:\x00]+)?")


class Stream(enum.Enum):
    """Output streams: STDOUT and STDERR apart (tty off), or the one TTY (tty on)."""

    STDOUT = "stdout"
    STDERR = "stderr"
    TTY = "tty"


STDOUT = Stream.STDOUT
STDERR = Stream.STDERR
TTY = Stream.TTY


class ExecError(Exception):
    """Base of the exec errors; ``reason`` is the user-facing text."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ExecStartError(ExecError):
    """The exec could not start (bad spec, no such binary, bad cwd, unknown user,
    container gone). Nothing was left running."""


class StdinClosed(ExecError):
    """stdin was closed (by ``close_stdin``) or the process no longer reads it."""


def _check_text(what: str, s: object) -> str:
    if not isinstance(s, str):
        raise ExecStartError(f"{what} must be a string, not {type(s).__name__}")
    if "\x00" in s:
        raise ExecStartError(f"{what} contains a NUL byte")
    return s


@dataclass(frozen=True)
class ExecSpec:
    """One exec: ``argv[0]`` (or ``executable``) is searched in PATH (of the resulting
    environment) when it has no '/'; ``env`` overrides the container's environment;
    ``cwd`` is absolute, inside the container (None or "": the container process's
    own); ``user`` is
    ``name``, ``uid``, ``name:group`` or ``uid:gid``, resolved in the container's
    /etc/passwd and /etc/group (default: the agent's, i.e. root); ``rows``/``cols``
    give the initial window size with ``tty`` (0 = unset); ``timeout`` in seconds
    from the start, after which the process group is killed."""

    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None
    tty: bool = False
    rows: int = 0
    cols: int = 0
    timeout: float | None = None
    executable: str | None = None  # the program, when it is not argv[0] (a session's Path)

    def __post_init__(self) -> None:
        if isinstance(self.argv, str | bytes) or not self.argv:
            raise ExecStartError("argv must be a non-empty list of strings")
        argv = tuple(_check_text("argv item", a) for a in self.argv)
        if not argv[0]:
            raise ExecStartError("argv[0] is empty")
        env: dict[str, str] = {}
        for k, v in self.env.items():
            _check_text("environment name", k)
            if not k or "=" in k:
                raise ExecStartError(f"bad environment name {k!r}")
            env[k] = _check_text(f"environment value of {k}", v)
        object.__setattr__(self, "argv", argv)
        object.__setattr__(self, "env", env)
        self._check_rest()

    @property
    def program(self) -> str:
        return self.executable or self.argv[0]

    def _check_rest(self) -> None:
        if self.executable is not None and not _check_text("executable", self.executable):
            raise ExecStartError("executable is empty")
        if self.cwd == "":
            object.__setattr__(self, "cwd", None)  # the wire's "unset"
        if self.cwd is not None and not _check_text("cwd", self.cwd).startswith("/"):
            raise ExecStartError(f"cwd must be an absolute path, not {self.cwd!r}")
        if self.user is not None and self.user != "":
            if not _USER_RE.fullmatch(_check_text("user", self.user)):
                raise ExecStartError(f"bad user {self.user!r}: want name|uid[:group|gid]")
        for name, n in (("rows", self.rows), ("cols", self.cols)):
            if not isinstance(n, int) or not 0 <= n <= MAX_WINSIZE:
                raise ExecStartError(f"{name} must be 0..{MAX_WINSIZE}, not {n!r}")
        t = self.timeout
        if t is not None and not (isinstance(t, int | float) and math.isfinite(t) and t > 0):
            raise ExecStartError(f"timeout must be a positive number of seconds, not {t!r}")


@dataclass(frozen=True)
class ExitStatus:
    """How an exec ended: exactly one of ``code`` (exit code) and ``signal`` (the
    signal that killed it) is set; ``timed_out`` when its timeout killed it."""

    code: int | None
    signal: int | None
    timed_out: bool = False

    def __post_init__(self) -> None:
        if (self.code is None) == (self.signal is None):
            raise ValueError("exactly one of code and signal must be set")

    @classmethod
    def from_reaped(cls, st: ReapedStatus, *, timed_out: bool = False) -> ExitStatus:
        if st.signal is not None:
            return cls(None, st.signal, timed_out)
        return cls(st.code, None, timed_out)

    @property
    def signal_name(self) -> str:
        if self.signal is None:
            return ""
        try:
            return _signal.Signals(self.signal).name
        except ValueError:
            return f"SIG{self.signal}"

    @property
    def shell_code(self) -> int:
        """The shell's convention: the exit code, or 128+N after death by signal N."""
        return self.code if self.code is not None else 128 + (self.signal or 0)


def session_spec(cfg: gi.SessionConfig, *, rows: int = 0, cols: int = 0) -> ExecSpec:
    """The spec of a session's main process (for attach: stdout and stderr apart, or a
    resizable tty). A session without ``openstdin`` gets ``close_stdin()`` at once."""
    env: dict[str, str] = {}
    for item in cfg.env:
        k, _, v = item.partition("=")
        env[k] = v
    return ExecSpec(
        argv=cfg.args or (cfg.path,),
        env=env,
        cwd=cfg.dir or "/",
        tty=cfg.tty,
        rows=rows,
        cols=cols,
        executable=cfg.path,
    )
