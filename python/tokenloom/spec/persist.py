"""Drafter state persisted per model across processes (the one home for every persisted state).

A drafter that learns while it runs (Token Recycling's adjacency matrix, a cross-request suffix
cache, ...) starts the next process where the last one stopped: its state is saved in the user
cache directory under ``(model key, name)`` and loaded when the state is created again.

* :func:`cache_dir`: ``$TOKENLOOM_CACHE_DIR``, else ``$XDG_CACHE_HOME/tokenloom``, else
  ``~/.cache/tokenloom``. Drafter states live in its ``state/`` folder, one file per model and
  name: ``<model key>-<name>.bin``.
* :func:`persistence_enabled`: False when ``TOKENLOOM_PERSIST=0`` (opt-out); a ``persist=``
  keyword of the public entry points overrides it per call (:func:`resolve_persist`).
* :func:`model_key`: the model's config and a cheap fingerprint of its embedding weights,
  the same in every process that loads the same model.
* :func:`load_state` / :func:`save_state`: bytes in and out. The file carries a header (magic,
  format version, the state's own version, name, key, payload length, SHA-256 of the payload);
  a missing file is a cold start, a corrupted or wrong-version file -- or anything but a
  regular file of at most :data:`MAX_STATE_BYTES`, e.g. a named pipe, which is never waited on
  -- gives ONE warning (:class:`PersistWarning`) and a cold start. :func:`read_regular_file`
  is that bounded read, for every loader of a state file. Saving writes a temporary file in the same folder,
  fsyncs it and renames it over the old one (``os.replace``), so a reader or a second writer
  never sees half a file; a failed write warns once and never raises into generation.
* :class:`StateSaver`: throttled saving of one live object (``obj.to_bytes()``): ``changed()``
  after each request saves at most every ``min_interval`` seconds, and whatever changed since
  the last save is written when the process exits. Its file is fixed when it is created: a
  state is never written into a cache folder other than the one it came from.
* :class:`PerModelStates`: the kept per-model states, per cache folder (a changed
  ``TOKENLOOM_CACHE_DIR`` gives the states saved in the new folder, or cold ones).

A persisted object exposes ``to_bytes() -> bytes`` and a ``from_bytes(data)`` that validates its
input (bad data -> ValueError, which :func:`load_object` turns into the one warning). The layout::

    magic b"TLSTATE1" | u32 header version | u32 state version | u16 len + name | u16 len + key
    | u64 payload length | 32-byte SHA-256 of the payload | payload        (little-endian)
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import stat
import struct
import tempfile
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Set, TypeVar, Union

__all__ = [
    "MAX_STATE_BYTES",
    "atomic_write",
    "MIN_SAVE_INTERVAL",
    "PerModelStates",
    "PersistWarning",
    "StateSaver",
    "cache_dir",
    "flush_all",
    "separate_states",
    "load_object",
    "load_state",
    "model_key",
    "persistence_enabled",
    "read_regular_file",
    "resolve_persist",
    "save_state",
    "state_path",
]

MAGIC = b"TLSTATE1"
HEADER_VERSION = 1
#: Seconds between two saves of one object by :meth:`StateSaver.changed` (the last change is
#: always written at process exit).
MIN_SAVE_INTERVAL = 30.0
#: Largest state file read (2 GiB: the largest recycler matrix, 1 GiB, with room to spare).
MAX_STATE_BYTES = 2 << 30
_FIXED = struct.Struct("<8sII")
_LEN = struct.Struct("<Q")
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")

T = TypeVar("T")


class PersistWarning(UserWarning):
    """A persisted state could not be read (cold start) or written (kept in memory only)."""


def cache_dir() -> Path:
    """``$TOKENLOOM_CACHE_DIR``, else ``$XDG_CACHE_HOME/tokenloom``, else ``~/.cache/tokenloom``."""
    env = os.environ.get("TOKENLOOM_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tokenloom"


def persistence_enabled() -> bool:
    """False when the environment opts out (``TOKENLOOM_PERSIST`` = ``0``/``false``/``no``/``off``)."""
    return os.environ.get("TOKENLOOM_PERSIST", "1").strip().lower() not in ("0", "false", "no", "off")


def resolve_persist(persist: Optional[bool]) -> bool:
    """A call's ``persist=`` keyword (True / False) or, when None, :func:`persistence_enabled`.

    Raises:
        TypeError: ``persist`` is neither None nor a bool.
    """
    if persist is None:
        return persistence_enabled()
    if not isinstance(persist, bool):
        raise TypeError(f"persist: expected True, False or None (use TOKENLOOM_PERSIST), got {persist!r}")
    return persist


_KEYS: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()
_KEYS_LOCK = threading.Lock()


def _embedding(model: Any) -> Any:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    weight = getattr(emb, "weight", None)
    if weight is None:  # not an HF model: the first parameter
        params = getattr(model, "parameters", None)
        weight = next(iter(params()), None) if callable(params) else None
    return weight


def model_key(model: Any) -> str:
    """A stable key of ``model``: its config (architecture, sizes, vocabulary) and a fingerprint
    of its input-embedding weights (4,096 evenly spaced values, their dtype and shape).

    The same model loaded in another process gets the same key; a model with other weights or
    another config gets another. Independent of device, threads and CPU packing. Cached per
    model object (recomputed when the embedding is edited in place).

    Returns:
        str: 24 hex digits.
    """
    import torch

    weight = _embedding(model)
    stamp = (id(weight), getattr(weight, "_version", 0))
    try:
        with _KEYS_LOCK:
            hit = _KEYS.get(model)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    except TypeError:  # not weak-referenceable
        pass
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        cfg = config.to_json_string(use_diff=False)
    else:
        cfg = type(model).__qualname__
    h = hashlib.sha256(cfg.encode())
    if weight is not None:
        with torch.no_grad():
            flat = weight.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step][:4096].double().cpu().numpy()  # 4096 numbers, once per model
        h.update(f"|{weight.dtype}|{tuple(weight.shape)}|".encode())
        h.update(sample.tobytes())
    key = h.hexdigest()[:24]
    try:
        with _KEYS_LOCK:
            _KEYS[model] = (stamp, key)
    except TypeError:
        pass
    return key


def _check_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 100 or not set(value) <= _NAME_OK:
        raise ValueError(f"{what}: expected 1-100 characters of [a-z0-9-_.], got {value!r}")
    return value


def _check_version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**32:
        raise ValueError(f"version: expected an int in [0, 2**32), got {version!r}")
    return version


def state_path(key: str, name: str) -> Path:
    """Where the state ``name`` of the model ``key`` lives: ``cache_dir()/state/<key>-<name>.bin``.

    Raises:
        ValueError: ``key`` or ``name`` is empty, too long or has characters outside
            ``[a-z0-9-_.]``.
    """
    return cache_dir() / "state" / f"{_check_name('key', key)}-{_check_name('name', name)}.bin"


_WARNED: Set[str] = set()
_WARNED_LOCK = threading.Lock()


def _warn_once(path: Path, message: str) -> None:
    with _WARNED_LOCK:
        if str(path) in _WARNED:
            return
        _WARNED.add(str(path))
    warnings.warn(message, PersistWarning, stacklevel=3)


def _encode(key: str, name: str, version: int, payload: bytes) -> bytes:
    nb, kb = name.encode(), key.encode()
    return b"".join(
        (
            _FIXED.pack(MAGIC, HEADER_VERSION, version),
            struct.pack("<H", len(nb)), nb,
            struct.pack("<H", len(kb)), kb,
            _LEN.pack(len(payload)),
            hashlib.sha256(payload).digest(),
            payload,
        )
    )


def _decode(data: bytes, key: str, name: str, version: int) -> bytes:
    """The payload of a state file, or ValueError saying what is wrong with it."""
    mv = memoryview(data)
    if len(data) < _FIXED.size or bytes(mv[:8]) != MAGIC:
        raise ValueError("not a tokenloom state file (bad magic)")
    _, header_version, got_version = _FIXED.unpack_from(data, 0)
    if header_version != HEADER_VERSION:
        raise ValueError(f"state file header version {header_version}, expected {HEADER_VERSION}")
    if got_version != version:
        raise ValueError(f"state {name!r} has version {got_version}, this tokenloom reads version {version}")
    off = _FIXED.size
    fields = []
    for what in ("name", "key"):
        if off + 2 > len(data):
            raise ValueError(f"state file truncated in its {what}")
        (n,) = struct.unpack_from("<H", data, off)
        off += 2
        fields.append(bytes(mv[off:off + n]).decode("utf-8", "replace"))
        off += n
    if fields != [name, key]:
        raise ValueError(f"state file is for {fields[0]!r} of model {fields[1]!r}, not {name!r} of {key!r}")
    if off + _LEN.size + 32 > len(data):
        raise ValueError("state file truncated in its header")
    (length,) = _LEN.unpack_from(data, off)
    off += _LEN.size
    digest = bytes(mv[off:off + 32])
    off += 32
    if len(data) - off != length:
        raise ValueError(f"state file truncated or padded: payload of {len(data) - off} bytes, header says {length}")
    payload = bytes(mv[off:])
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError("state file checksum mismatch (corrupted)")
    return payload


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device or another special file"


def read_regular_file(path: "os.PathLike[str] | str", max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them. The file is
    opened without blocking and checked on the open descriptor, so a named pipe (or a folder,
    a device) put where a state file is expected is refused at once, never waited on.

    Raises:
        FileNotFoundError: no such file. OSError: unreadable.
        ValueError: not a regular file, or larger than ``max_bytes``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: expected a regular file, got {_kind(st.st_mode)}")
        if st.st_size > max_bytes:
            raise ValueError(f"{path}: expected at most {max_bytes} bytes, the file has {st.st_size}")
        f = os.fdopen(fd, "rb")
        fd = -1  # closed with f
        with f:
            data = f.read(max_bytes + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > max_bytes:  # grew since the check
        raise ValueError(f"{path}: expected at most {max_bytes} bytes, the file has more")
    return data


def load_state(key: str, name: str, version: int) -> Optional[bytes]:
    """The payload saved for ``(key, name)`` at ``version``.

    Returns:
        bytes, or None when there is no file (cold start) or it cannot be used: unreadable, not
        a regular file (a named pipe is not waited on), larger than :data:`MAX_STATE_BYTES`,
        corrupted, another version, another model or name -- then ONE
        :class:`PersistWarning` per file and process says why and where.

    Raises:
        ValueError: a malformed ``key`` / ``name`` / ``version`` (a caller's bug).
    """
    path = state_path(key, name)
    _check_version(version)
    try:
        data = read_regular_file(path, MAX_STATE_BYTES)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        _warn_once(path, f"tokenloom: cannot read the saved {name} state ({e}); starting cold")
        return None
    try:
        return _decode(data, key, name, version)
    except ValueError as e:
        _warn_once(path, f"tokenloom: ignoring the saved {name} state at {path}: {e}; starting cold (it is overwritten on the next save)")
        return None


def save_state(key: str, name: str, version: int, payload: bytes) -> None:
    """Save ``payload`` for ``(key, name)`` at ``version``, atomically: a temporary file in the
    same folder, fsync, then ``os.replace`` over the old file (concurrent writers: the last one
    wins, no reader ever sees a partial file). A failure to write gives ONE
    :class:`PersistWarning` per file and process and is otherwise ignored.

    Raises:
        ValueError: a malformed ``key`` / ``name`` / ``version``. TypeError: ``payload`` is not
        bytes-like.
    """
    path = state_path(key, name)
    _check_version(version)
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload: expected bytes, got {type(payload).__name__}")
    _write(path, name, _encode(key, name, version, bytes(payload)))


def atomic_write(path: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a uniquely named temporary file beside it (so two
    processes never share one), flushed and synced, then renamed over ``path``. The one writer
    of every file tokenloom keeps (states, bench results, serving statistics).

    Raises:
        OSError: the directory cannot be made or written (the temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write(path: Path, name: str, data: bytes) -> None:
    try:
        atomic_write(path, data)
    except OSError as e:
        _warn_once(path, f"tokenloom: cannot save the {name} state to {path} ({e}); it stays in memory only")


def load_object(key: str, name: str, version: int, from_bytes: Callable[[bytes], T]) -> Optional[T]:
    """``from_bytes(load_state(...))``, or None on a cold start; a ValueError from
    ``from_bytes`` (data that passed the checksum but not the object's own checks, e.g. another
    vocabulary) becomes the one :class:`PersistWarning` and a cold start."""
    data = load_state(key, name, version)
    if data is None:
        return None
    try:
        return from_bytes(data)
    except ValueError as e:
        _warn_once(state_path(key, name), f"tokenloom: ignoring the saved {name} state at {state_path(key, name)}: {e}; starting cold")
        return None


class StateSaver:
    """Throttled, atomic saving of one live object's state (``obj.to_bytes()``).

    Call :meth:`changed` when the object learned something (e.g. after each request): it saves
    at once when the last save is at least ``min_interval`` seconds old, else marks the object
    dirty; dirty objects are saved at process exit (:func:`flush_all`, registered with
    ``atexit``, which also waits for background writes). The object is held weakly. Thread-safe.

    Args:
        key, name, version: as in :func:`save_state`.
        obj: anything with ``to_bytes() -> bytes``.
        min_interval: seconds between two saves by :meth:`changed` (default :data:`MIN_SAVE_INTERVAL`).
    """

    def __init__(self, key: str, name: str, version: int, obj: Any, *, min_interval: float = MIN_SAVE_INTERVAL):
        # Fixed now (absolute): the object is saved where it was created or loaded, never into
        # a folder set later (PerModelStates gives a changed folder states of its own).
        self.path = state_path(key, name).absolute()
        self.key, self.name, self.version = key, name, _check_version(version)
        self._obj = weakref.ref(obj)
        self.min_interval = float(min_interval)
        self._last = float("-inf")
        self._dirty = False
        self._pending: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        with _SAVERS_LOCK:
            _SAVERS.add(self)

    def obj(self) -> Any:
        """The saved object (None once it is gone)."""
        return self._obj()

    def changed(self) -> None:
        """The object changed: save it if the last save is ``min_interval`` old (the state is
        copied here, the file written by a background thread, so a timed request does not
        wait for the disk), else later."""
        with self._lock:
            self._dirty = True
            due = time.monotonic() - self._last >= self.min_interval
        if due:
            self.flush(background=True)

    def flush(self, background: bool = False) -> None:
        """Save now if anything changed since the last save (and wait for a background write)."""
        with self._lock:
            pending, self._pending = self._pending, None
            obj = self._obj()
            payload = None
            if self._dirty and obj is not None:
                self._dirty = False
                self._last = time.monotonic()
                payload = obj.to_bytes()
        if pending is not None:
            pending.join()
        if payload is None:
            return
        data = _encode(self.key, self.name, self.version, payload)
        if not background:
            _write(self.path, self.name, data)
            return
        thread = threading.Thread(target=_write, args=(self.path, self.name, data), name=f"tokenloom-save-{self.name}", daemon=True)
        with self._lock:
            self._pending = thread
        thread.start()

    def __repr__(self) -> str:
        return f"StateSaver({self.name!r}, key={self.key!r}, dirty={self._dirty})"


_SAVERS: "weakref.WeakSet[StateSaver]" = weakref.WeakSet()
_SAVERS_LOCK = threading.Lock()


def flush_all() -> None:
    """Save every :class:`StateSaver` with unsaved changes (run at process exit)."""
    with _SAVERS_LOCK:
        savers = list(_SAVERS)
    for saver in savers:
        try:
            saver.flush()
        except Exception as e:  # noqa: BLE001 - never fail an exit over a cache
            warnings.warn(f"tokenloom: could not save the {saver.name} state: {e}", PersistWarning, stacklevel=2)


atexit.register(flush_all)


class PerModelStates:
    """Process-wide drafter states, one per (model, extra key), each loaded from and saved
    through one persisted name (the registry behind ``default_recycler`` and
    ``default_suffix_cache``). Without a model: one state per extra key, never persisted.

    The states of models are kept per cache folder (:func:`cache_dir`): a state is only ever
    saved into the folder it was loaded from or created under. When the folder changes (e.g.
    ``TOKENLOOM_CACHE_DIR`` set later), the next :meth:`get` saves the kept states' unsaved
    changes into their own folder, forgets them, and loads (or creates) the states of the new
    folder; a request still running on a forgotten state saves nothing more.
    """

    def __init__(self) -> None:
        self._objs: dict = {}
        self._savers: dict = {}
        self._folder: Optional[Path] = None
        self._lock = threading.Lock()
        _REGISTRIES.append(weakref.ref(self))

    def _follow_folder(self) -> None:
        """Under the lock: forget the model states of another cache folder (saved first)."""
        folder = cache_dir().absolute()
        if folder == self._folder:
            return
        for saver in self._savers.values():
            saver.flush()
        self._objs = {k: v for k, v in self._objs.items() if k[0] is None}
        self._savers.clear()
        self._folder = folder

    def get(self, model: Any, extra: tuple, name: str, version: int, persist: Optional[bool],
            make: Callable[[], T], load: Callable[[bytes], T]) -> T:
        """The state of ``(model, *extra)`` in the current cache folder: kept, else loaded
        (persistence on and a model given), else ``make()``.

        Raises:
            TypeError: ``persist`` is not None or a bool (with a model).
        """
        want = resolve_persist(persist) if model is not None else False
        key = model_key(model) if model is not None else None
        with self._lock:
            if key is not None:
                self._follow_folder()
            obj = self._objs.get((key, *extra))
            if obj is not None:
                return obj
            obj = load_object(key, name, version, load) if key is not None and want else None
            if obj is None:
                obj = make()
            self._objs[(key, *extra)] = obj
            if key is not None:
                self._savers[(key, name)] = StateSaver(key, name, version, obj)
            return obj

    def changed(self, obj: Any, model: Any, name: str, persist: Optional[bool]) -> None:
        """After a request on ``obj``: save it (throttled, atomic) into its own cache folder when
        persistence is on and it is the kept state of ``model`` under ``name``; a no-op for any
        other object (a state forgotten on a folder change included)."""
        if not resolve_persist(persist):
            return
        with self._lock:
            saver = self._savers.get((model_key(model), name))
        if saver is not None and saver.obj() is obj:
            saver.changed()

    def reset(self) -> None:
        """Forget every kept state (the next call starts from the saved state, or cold)."""
        with self._lock:
            self._objs.clear()
            self._savers.clear()
            self._folder = None

    def swap(self, kept: tuple) -> tuple:
        """Keep ``kept`` (``(states, savers)`` this method returned before, or ``({}, {})``) as
        the kept states and their savers; return the ones kept until now (see
        :func:`separate_states`)."""
        with self._lock:
            before = (self._objs, self._savers)
            self._objs, self._savers = kept
            return before


#: Every :class:`PerModelStates` of the process (weakly held), for :func:`separate_states`.
_REGISTRIES: "list[weakref.ReferenceType[PerModelStates]]" = []


@contextlib.contextmanager
def separate_states(store: dict, user: Any) -> Iterator[None]:
    """Within the block the process-wide drafter states (every :class:`PerModelStates`: the
    default recyclers, the default suffix caches) are ``user``'s own, kept in ``store`` between
    blocks; outside it the process's own are back. A benchmark gives each method its own
    states this way, so that no method drafts from what another method just wrote while
    answering the same question. Not for concurrent use with other requests (the registries
    are process-wide); meant for states that are not persisted (``persist=False``)."""
    registries = [r for r in (ref() for ref in _REGISTRIES) if r is not None]
    mine = store.setdefault(user, {})
    saved = [reg.swap(mine.get(id(reg), ({}, {}))) for reg in registries]
    try:
        yield
    finally:
        for reg, objs in zip(registries, saved):
            mine[id(reg)] = reg.swap(objs)
