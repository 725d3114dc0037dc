"""Adjustments to dependencies' internals, applied once per process from the command's entry point.

Each adjustment was measured (docs/performance.md, "Where the time goes") against one version of what it adjusts and
is applied only to the versions in its range; another version is left as it is, and tests/test_tuning.py fails
until the adjustment has been checked against it and its range moved. setup.cfg pins h11 and httpcore below their
next minor version so that such an upgrade is a deliberate change.

`apply()` is called by the command line (main.py) for every command it runs. The HTTP adjustments take effect when
httpcore is first imported, so a run that never speaks HTTP never imports it (start-up time counts).
"""

import os
import re
import sys

# [lowest, highest) versions each adjustment was written for.
HTTPCORE_VERSIONS = ((1, 0), (1, 1))   # use_large_reads: HTTP11Connection.READ_NUM_BYTES, read per recv call
H11_VERSIONS = ((0, 16), (0, 17))      # use_lean_body_reads: the three attributes of h11 0.16's ReceiveBuffer
# streams.tune_allocator: mallopt's M_TRIM_THRESHOLD and M_MMAP_THRESHOLD mean the same in every glibc 2 release;
# it was measured on 2.36, with the per-thread cache (2.26 on) that shapes how freed buffers are reused.
GLIBC_VERSIONS = ((2, 26), (3, 0))

# Bytes asked of the socket per read of an HTTP/1.1 response. httpcore's default is 64 KiB; every read then costs a
# pass through h11, our stream wrappers and a GIL hand-off for each hash, inflate and write. 256 KiB reads took the
# 24-layer 190 MB pull from 2.5 to 1.7 s on 2 cores; 1 MiB reads were no faster and doubled peak memory (each read
# allocates its full size first), see docs/performance.md, "Where the time goes".
READ_SIZE = 256 * 1024

_applied = False


def version_tuple(text):
    """The leading numbers of a version: (0, 16, 0) from '0.16.0' or '0.16.0rc1', (2, 36) from 'glibc 2.36'."""
    match = re.search(r'\d+(?:\.\d+)*', str(text or ''))
    return tuple(int(part) for part in match.group(0).split('.')) if match else ()


def in_range(version, versions):
    """True when `version` (text or tuple) lies in [low, high) of `versions`; False when it has no numbers."""
    if isinstance(version, str):
        version = version_tuple(version)
    low, high = versions
    return bool(version) and low <= version < high


def glibc_version():
    """The running C library's version as 'glibc 2.36', or '' when it is not glibc."""
    try:
        return os.confstr('CS_GNU_LIBC_VERSION') or ''
    except (AttributeError, ValueError, OSError):
        return ''


def apply():
    """Apply every adjustment whose dependency version is in its range, once per process."""
    global _applied
    if _applied:
        return
    _applied = True
    from occystrap import streams
    streams.tune_allocator()
    if 'httpcore' in sys.modules:
        adjust_http()
    else:
        sys.meta_path.insert(0, _AfterImport('httpcore', adjust_http))


def adjust_http():
    """The HTTP/1.1 read adjustments, each applied only when its dependency's version is in range.

    Returns the names of those applied. Versions come from the imported modules themselves: they describe the code
    being adjusted, and reading them costs nothing where importlib.metadata would add ~6 ms to every HTTP command.
    """
    import h11
    import httpcore
    applied = []
    if in_range(httpcore.__version__, HTTPCORE_VERSIONS) and use_large_reads():
        applied.append('large_reads')
    if in_range(h11.__version__, H11_VERSIONS) and use_lean_body_reads():
        applied.append('lean_body_reads')
    return applied


class _AfterImport:
    """A meta path finder that runs `then()` right after module `name` is first imported, then steps aside."""

    def __init__(self, name, then):
        self.name = name
        self.then = then

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, 'find_spec', None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, 'exec_module', None)
        if exec_module is None:   # pragma: no cover - not a loader we know how to follow: leave it unadjusted
            return spec
        then = self.then

        def exec_then_adjust(module):
            exec_module(module)
            then()
        loader.exec_module = exec_then_adjust
        return spec


def use_large_reads(size=READ_SIZE):
    """Make httpcore's HTTP/1.1 connections read `size` bytes per recv (a class attribute it reads per call)."""
    import httpcore
    connection = getattr(httpcore, 'HTTP11Connection', None)
    if connection is None or not isinstance(getattr(connection, 'READ_NUM_BYTES', None), int):
        return False
    if connection.READ_NUM_BYTES < size:
        connection.READ_NUM_BYTES = size
    return True


def _receive(self, data):
    """h11 ReceiveBuffer.__iadd__ that adopts a received bytes object as the buffer when the buffer is empty."""
    if not self._data and type(data) is bytes:
        self._data = data
    else:
        if type(self._data) is bytes:
            self._data = bytearray(self._data)
        self._data += data
    return self


def _take_all(self):
    out = self._data
    self._data = bytearray()
    self._next_line_search = 0
    self._multiple_lines_search = 0
    return out


def _extract(self, count):
    """h11 ReceiveBuffer._extract, returning a bytearray as h11 expects, without copying when it takes everything."""
    if type(self._data) is bytes:
        self._data = bytearray(self._data)
    if count >= len(self._data):
        return _take_all(self)
    out = self._data[:count]
    del self._data[:count]
    self._next_line_search = 0
    self._multiple_lines_search = 0
    return out


def _maybe_extract_at_most(self, count):
    """h11 ReceiveBuffer.maybe_extract_at_most (body bytes) handing over the buffer, as received, when it takes all."""
    if not self._data or count <= 0:
        return None
    if count >= len(self._data):
        return _take_all(self)
    return _extract(self, count)


def use_lean_body_reads():
    """Let response bodies pass through h11 without being copied.

    h11 0.16's ReceiveBuffer copies every body chunk three times: into its bytearray, out of it to test it for
    emptiness, and out again to return it; httpcore then copies the bytearray into bytes. With these methods a
    socket read that arrives in an empty buffer and is taken whole (the usual case for a streamed blob) is the same
    bytes object all the way, and httpcore's bytes() of it is free; lines (status and headers) still come out as
    the bytearrays h11 edits in place. Besides the version range (adjust_http), applied only to the buffer layout
    this was written against. About 6% of the CPU of the 24-layer pull (docs/performance.md).
    """
    try:
        from h11._receivebuffer import ReceiveBuffer
    except ImportError:   # pragma: no cover - h11 reorganised: nothing to do
        return False
    if getattr(ReceiveBuffer, '_occystrap_lean', False):
        return True
    if set(vars(ReceiveBuffer())) != {'_data', '_next_line_search', '_multiple_lines_search'}:
        return False
    ReceiveBuffer.__iadd__ = _receive
    ReceiveBuffer._extract = _extract
    ReceiveBuffer.maybe_extract_at_most = _maybe_extract_at_most
    ReceiveBuffer._occystrap_lean = True
    return True
