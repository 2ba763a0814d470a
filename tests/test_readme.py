"""Every command in README.md exists: each `python X ...` line names a script whose --help lists every flag the line
uses, and every `make` target it names is in the Makefile. The commands themselves run in `make demo` and in the
module tests (tracker, train, evaluate, overlay, clusters)."""
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line)
    return lines


def python_commands():
    out = {}
    for line in readme_commands():
        argv = shlex.split(line)
        if argv[0] != "python":
            continue
        target = argv[1:3] if argv[1] == "-m" else argv[1:2]
        flags = {a.split("=", 1)[0] for a in argv if a.startswith("--") or re.fullmatch(r"-[a-zA-Z]", a)}
        out.setdefault(tuple(target), set()).update(flags)
    return sorted(out.items())


def test_readme_has_commands():
    cmds = readme_commands()
    assert "make demo" in cmds and "make test" in cmds
    assert len(python_commands()) >= 8


@pytest.mark.slow
@pytest.mark.parametrize("target, flags", python_commands(), ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_readme_python_command_flags_exist(target, flags):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable] + list(target) + ["--help"], cwd=ROOT, capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    missing = [f for f in flags if not re.search(rf"(^|[\s,\[]){re.escape(f)}([\s,=\]]|$)", r.stdout, re.M)]
    assert not missing, f"README uses {missing} but `{' '.join(target)} --help` does not list them"


def test_readme_make_targets_exist():
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    for line in readme_commands():
        argv = shlex.split(line)
        while argv and "=" in argv[0]:      # FRESH=1 make demo
            argv = argv[1:]
        if argv and argv[0] == "make":
            for t in argv[1:]:
                assert t in targets, f"README runs `make {t}` but the Makefile has no such target"
