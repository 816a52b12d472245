# SPDX-License-Identifier: Apache-2.0
"""distrattn.Error and one subclass per da_status."""


class Error(Exception):
    """A failed distrattn call.

    status: the da_status value (an int, e.g. -1), or None for errors that
    have none (the library not found); status_name: its enumerator's name
    ("DA_ERR_INVALID_ARG"); detail: da_context_last_error's message (the
    field and value rejected, a build log, a driver error), or the Python
    side's own message for what it checked itself."""

    status = None
    status_name = None

    def __init__(self, detail, what=None):
        self.detail = detail
        self.what = what
        head = f"{what}: " if what else ""
        tail = f" [{self.status_name}]" if self.status_name else ""
        super().__init__(f"{head}{detail}{tail}")


class InvalidArgument(Error, ValueError):
    status, status_name = -1, "DA_ERR_INVALID_ARG"


class HostMemory(Error, MemoryError):
    status, status_name = -2, "DA_ERR_HOST_MEMORY"


class DeviceMemory(Error, MemoryError):
    status, status_name = -3, "DA_ERR_DEVICE_MEMORY"


class NoDevice(Error):
    status, status_name = -4, "DA_ERR_NO_DEVICE"


class Unsupported(Error, NotImplementedError):
    """DA_ERR_UNSUPPORTED: what the backend (or the library) does not do (yet)."""
    status, status_name = -5, "DA_ERR_UNSUPPORTED"


class BuildError(Error):
    status, status_name = -6, "DA_ERR_BUILD"


class BackendError(Error):
    status, status_name = -7, "DA_ERR_BACKEND"


class LibraryNotFound(Error, OSError):
    """libdistrattn could not be loaded (no da_status)."""


_BY_STATUS = {c.status: c for c in (InvalidArgument, HostMemory, DeviceMemory, NoDevice,
                                      Unsupported, BuildError, BackendError)}


def error_for(status, detail, what=None):
    """The exception for a non-zero da_status (an unknown one is an Error
    whose status_name says so)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        e = Error(f"{detail} (unknown da_status {status})", what)
        e.status, e.status_name = status, f"da_status {status}"
        return e
    return cls(detail, what)
