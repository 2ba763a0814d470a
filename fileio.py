"""Small file helpers shared by the commands, the tracker and the scripts; no TensorFlow here.

Outputs are written atomically (a temporary file in the same folder, then a rename), JSON inputs are read with
an error that names the file and what is wrong with it, and an output path can be checked before the work starts.
"""
import json
import os
import tempfile


class InputError(ValueError):
    """Bad input (a file, a path, a field): the commands print its message on one line and exit non-zero."""


def _write_atomic(path: str, data: bytes):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.basename(path))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes):
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    _write_atomic(path, data)


def atomic_write_text(path: str, text: str):
    """Write `text` (UTF-8) to `path` through a temporary file in the same folder and a rename."""
    _write_atomic(path, text.encode("utf-8"))


def atomic_write_json(path: str, data, **dumps_kwargs):
    """Write `data` as JSON to `path` atomically; `dumps_kwargs` go to `json.dumps` (indent, separators)."""
    atomic_write_text(path, json.dumps(data, **dumps_kwargs))


def read_bytes(path: str, error: type = InputError, what: str = "") -> bytes:
    """The bytes of the file at `path`; one that cannot be read raises `error` naming it (after `what`, if given)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise error(f"{what + ' ' if what else ''}{path}: cannot read ({e.strerror})") from None


def read_json(path: str, what: str = "JSON file", error: type = InputError):
    """Parse the JSON file at `path`; a missing, unreadable or malformed file raises `error` naming it.

    `what` says what the file is ("annotation file", "results file") in the message, e.g.
    `annotation file a.json: not valid JSON (Expecting ',' delimiter: line 3 column 5)`.
    """
    raw = read_bytes(path, error, what)
    try:
        return json.loads(raw)
    except UnicodeDecodeError as e:
        raise error(f"{what} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise error(f"{what} {path}: not valid JSON ({e.msg}: line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise error(f"{what} {path}: nested too deeply to read") from None


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _probe_folder(folder: str, path: str, what: str, error: type):
    """Create and remove a file in `folder`: the only test that also holds for root and read-only mounts."""
    if not os.path.isdir(folder):
        raise error(f"{what} {path}: {folder} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_probe_")
    except OSError as e:
        raise error(f"{what} {path}: cannot write in {folder} ({e.strerror})") from None
    os.close(fd)
    os.remove(tmp)


def check_writable_file(path: str, what: str = "output file", error: type = InputError):
    """Raise `error` unless a file can be written at `path` (atomically: a new file in its folder, then a rename).

    Call it before the work starts, so that an unwritable output is found before hours of inference. Nothing is
    created: a missing folder is checked through its nearest existing parent, where it would be made.
    """
    if not path:
        raise error(f"{what}: empty path")
    if os.path.isdir(path):
        raise error(f"{what} {path}: is a folder, expected a file name")
    _probe_folder(_nearest_existing(os.path.dirname(os.path.abspath(path))), path, what, error)


def check_writable_dir(path: str, what: str = "output folder", error: type = InputError):
    """Raise `error` unless `path` is, or can be made as, a folder that files can be written in."""
    if not path:
        raise error(f"{what}: empty path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise error(f"{what} {path}: exists and is not a folder")
    _probe_folder(_nearest_existing(path), path, what, error)


def confined_path(root: str, name, where: str, error: type = InputError) -> str:
    """`root`/`name` for a file name read from a dataset (a frame's entry in `file_names`), refused when it would
    leave `root`: an absolute name, or one whose `..` parts climb above it. `where` names the entry in the error.

    The check is on the name itself, not on the resolved path, so a dataset folder that is a symbolic link works.
    """
    if not isinstance(name, str) or not name:
        raise error(f"{where}: a file name must be a non-empty string, got {name!r}")
    norm = os.path.normpath(name)
    if os.path.isabs(name) or norm == ".." or norm.startswith(".." + os.sep) or norm == ".":
        raise error(f"{where}: file name {name!r} leaves the folder {root} (absolute, or climbing out with '..')")
    return os.path.join(root, name)
