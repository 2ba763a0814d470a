"""fileio: atomic writes, JSON read with a named error, output paths checked before the work."""
import os
import stat
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fileio  # noqa: E402
from fileio import InputError  # noqa: E402


@pytest.mark.slow
def test_fileio_does_not_import_tensorflow():
    import subprocess
    code = "import sys, fileio; assert 'tensorflow' not in sys.modules and 'numpy' not in sys.modules"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    fileio.atomic_write_json(str(path), {"x": [1, 2]}, separators=(",", ":"))
    assert path.read_text() == '{"x":[1,2]}'
    fileio.atomic_write_text(str(path), "é\n")
    assert path.read_bytes() == "é\n".encode("utf-8")
    fileio.atomic_write_bytes(str(path), b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(path.parent)) == ["a.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        fileio.atomic_write_json(str(path), {"x": object()})
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.json"]


@pytest.mark.parametrize("content, message", [
    (None, r"results file .*missing.json: cannot read \(No such file or directory\)"),
    (b'{"a": [1, 2', r"results file .*bad.json: not valid JSON \(Expecting ',' delimiter: line 1 column 12\)"),
    (b"{\"a\": \"\xff\"}", r"results file .*bad.json: not UTF-8 text \(invalid start byte at byte 7\)"),
    (b"[" * 100000 + b"]" * 100000, r"results file .*bad.json: nested too deeply"),
])
def test_read_json_names_the_file_and_the_fault(tmp_path, content, message):
    path = tmp_path / ("missing.json" if content is None else "bad.json")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        fileio.read_json(str(path), "results file")


def test_read_json_raises_the_callers_error_type(tmp_path):
    class MyError(InputError):
        pass
    (tmp_path / "a.json").write_text('{"k": 1}')
    assert fileio.read_json(str(tmp_path / "a.json")) == {"k": 1}
    with pytest.raises(MyError, match="annotation file"):
        fileio.read_json(str(tmp_path / "none.json"), "annotation file", MyError)


def test_check_writable_accepts_new_paths_and_creates_nothing(tmp_path):
    fileio.check_writable_file(str(tmp_path / "new" / "deeper" / "out.json"))
    fileio.check_writable_dir(str(tmp_path / "new_dir"))
    assert os.listdir(tmp_path) == []


def test_check_writable_refuses_folders_files_and_read_only_places(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"--out .*file/out.json: .*file is not a folder"):
        fileio.check_writable_file(str(tmp_path / "file" / "out.json"), "--out")
    with pytest.raises(InputError, match=r"is a folder, expected a file name"):
        fileio.check_writable_file(str(tmp_path))
    with pytest.raises(InputError, match=r"exists and is not a folder"):
        fileio.check_writable_dir(str(tmp_path / "file"))
    # /proc refuses new files even for root, so this holds whoever runs the tests.
    with pytest.raises(InputError, match=r"/proc/out.json: cannot write in /proc"):
        fileio.check_writable_file("/proc/out.json")
