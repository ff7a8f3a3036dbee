"""Exceptions for the negative errno codes libllep-client returns.

Every error is a :class:`LlepError` carrying ``errno`` (positive, as in the ``errno`` module),
``strerror`` (libllep-client's name for it) and ``message`` (the sentence from
``llep_client_error()``: the daemon's message when the daemon refused). Codes with a natural
Python meaning also derive from the built-in exception for it, so ``except ValueError`` catches
an argument llepd refused.
"""
from __future__ import annotations

import errno as _errno
from typing import Dict, Type


class LlepError(Exception):
    """An error from libllep-client or llepd."""

    errno: int
    strerror: str
    message: str

    def __init__(self, text: str, *, errno: int = 0, strerror: str = "", message: str = ""):
        super().__init__(text)
        self.errno = errno
        self.strerror = strerror
        self.message = message

    def __str__(self) -> str:
        # OSError's own would print only "[Errno N] strerror" for the OSError subclasses.
        return str(self.args[0]) if self.args else self.strerror


class LlepValueError(LlepError, ValueError):
    """-EINVAL: an argument was refused (by this package, the library or llepd)."""


class LlepMemoryError(LlepError, MemoryError):
    """-ENOMEM: the devices cannot hold the layer or the step."""


class LlepConnectionError(LlepError, ConnectionError):
    """llepd is not there, or went away (-ECONNRESET, -ECONNREFUSED, -ENOENT on connect)."""


class LlepConnectionLostError(LlepConnectionError):
    """-ECONNRESET: llepd went away (it stopped or crashed) while connected. The call's output
    was not written. A client connected with ``reconnect=True`` tries again on later calls."""


class LlepTimeoutError(LlepError, TimeoutError):
    """-ETIMEDOUT: a collective step did not fill in time; or a wait with a timeout ran out."""


class LlepNotFoundError(LlepError, LookupError):
    """-ENOENT: no such layer or model."""


class LlepExistsError(LlepError, FileExistsError):
    """-EEXIST: the layer or model name is taken."""


class LlepPermissionError(LlepError, PermissionError):
    """-EPERM, -EACCES: llepd's admin rights are needed, or the socket is not ours."""


class LlepBusyError(LlepError):
    """-EBUSY: a model still loading, or one whose layers are in use."""


_BY_ERRNO: Dict[int, Type[LlepError]] = {
    _errno.EINVAL: LlepValueError,
    _errno.ENOMEM: LlepMemoryError,
    _errno.ECONNRESET: LlepConnectionLostError,
    _errno.ECONNREFUSED: LlepConnectionError,
    _errno.ESHUTDOWN: LlepConnectionError,
    _errno.EPIPE: LlepConnectionError,
    _errno.ETIMEDOUT: LlepTimeoutError,
    _errno.ENOENT: LlepNotFoundError,
    _errno.EEXIST: LlepExistsError,
    _errno.EPERM: LlepPermissionError,
    _errno.EACCES: LlepPermissionError,
    _errno.EBUSY: LlepBusyError,
}


def error_for(code: int, strerror: str, message: str, *, connecting: bool = False) -> LlepError:
    """The exception for a negative errno ``code`` from the library."""
    err = -code
    cls = _BY_ERRNO.get(err, LlepError)
    if connecting and err == _errno.ENOENT:
        cls = LlepConnectionError    # no socket at the path: no daemon there
    text = f"{strerror}: {message}" if message and message != strerror else strerror
    return cls(text, errno=err, strerror=strerror, message=message)


def invalid(text: str) -> LlepValueError:
    """An argument this package refuses before calling the library, as the library would."""
    return LlepValueError(text, errno=_errno.EINVAL, strerror="invalid argument", message=text)
