"""Every reference in the repository resolves inside it: each `info/<FILE>.md#anchor` cited by code, tests, data
files or docs names a heading (or an explicit `<a id>`) that exists, each relative Markdown link points at a file of
the repository (and at an existing heading when it has a `#anchor`), and no file cites a path outside the
repository (the design notes the project was written from are not part of it: info/DESIGN.md restates them)."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_EXT = (".py", ".md", ".txt", ".cfg", ".ini", ".toml", ".yaml", ".yml", ".sh", ".json")
TEXT_NAMES = ("Makefile",)
SKIP_DIRS = {".git", ".venv", "runs", "data", "exported", "weights", "__pycache__", ".pytest_cache", "node_modules"}

# `info/DESIGN.md#m7-automatic-loss-balancing`; a bare `DESIGN.md#...` in code means the same file.
CITATION = re.compile(r"(?<![\w./-])((?:info/)?(?:DESIGN|DIFFERENCES|RESULTS)\.md)#([\w-]+)")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
# Places outside the repository that earlier versions of the code cited. Built from pieces so that this file
# does not match itself.
OUTSIDE = re.compile("|".join([
    r"\.\./" + "shared", "/" + "work/", "decisions" + r"\.md", r"decisions (?:[MT]\d|§)",
    "original-" + "model", "original-" + "tracking", r"README §\d",
]))


def repo_files():
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split("\n")
        files = [f for f in out if f and os.path.isfile(os.path.join(ROOT, f))]
    except (OSError, subprocess.CalledProcessError):      # not a git checkout (an unpacked archive)
        files = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            files += [os.path.relpath(os.path.join(dirpath, n), ROOT) for n in filenames]
    return sorted({f for f in files if f.endswith(TEXT_EXT) or os.path.basename(f) in TEXT_NAMES})


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8", errors="replace") as f:
        return f.read()


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*|_(?=\w)|(?<=\w)_", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)            # [text](link) -> text
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(rel: str) -> set:
    """Every anchor of a Markdown file: one per heading (duplicates get -1, -2, ... as on GitHub) and each
    explicit <a id="..."> / <a name="...">. Headings inside fenced code blocks do not count."""
    found, seen = set(), {}
    text = re.sub(r"^```.*?^```", "", read(rel), flags=re.DOTALL | re.MULTILINE)
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE):
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        found.add(s if n == 0 else f"{s}-{n}")
    found.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return found


def citations():
    """(file, line number, target file relative to the root, anchor or None) of every reference to check."""
    out = []
    for rel in repo_files():
        is_md = rel.endswith(".md")
        for n, line in enumerate(read(rel).splitlines(), 1):
            for m in CITATION.finditer(line):
                target = m.group(1)
                if not target.startswith("info/"):
                    here = os.path.dirname(rel)
                    target = os.path.join(here, target) if is_md and here == "info" else "info/" + target
                out.append((rel, n, os.path.normpath(target), m.group(2)))
            if not is_md:
                continue
            for m in MD_LINK.finditer(line):
                link = m.group(1)
                if re.match(r"[a-z][a-z0-9+.-]*:", link):         # https:, mailto:
                    continue
                path, _, anchor = link.partition("#")
                target = os.path.normpath(os.path.join(os.path.dirname(rel), path)) if path else rel
                out.append((rel, n, target, anchor or None))
    return list(dict.fromkeys(out))      # a Markdown link to a design note is also a citation: report it once


def test_the_design_notes_exist_and_are_cited():
    cites = citations()
    for name in ("DESIGN", "DIFFERENCES", "RESULTS"):
        assert os.path.isfile(os.path.join(ROOT, "info", f"{name}.md")), f"info/{name}.md is missing"
    cited = {(t, a) for _, _, t, a in cites if t == "info/DESIGN.md"}
    # the code cites the design notes in many places; a scan that finds few means the pattern broke
    assert len(cited) >= 30, f"only {len(cited)} distinct info/DESIGN.md anchors cited"


def test_every_cited_anchor_and_linked_file_exists():
    cache, broken = {}, []
    for rel, n, target, anchor in citations():
        if target.startswith(".."):
            broken.append(f"{rel}:{n}: links to {target}, outside the repository")
            continue
        if not os.path.exists(os.path.join(ROOT, target)):
            broken.append(f"{rel}:{n}: links to {target}, which does not exist")
            continue
        if anchor is None:
            continue
        if not target.endswith(".md"):
            continue
        if target not in cache:
            cache[target] = anchors(target)
        if anchor not in cache[target]:
            broken.append(f"{rel}:{n}: {target}#{anchor}: no such heading in {target}")
    assert not broken, "broken references:\n" + "\n".join(broken)


def test_no_file_cites_a_path_outside_the_repository():
    hits = []
    for rel in repo_files():
        if rel == os.path.relpath(__file__, ROOT):
            continue
        for n, line in enumerate(read(rel).splitlines(), 1):
            m = OUTSIDE.search(line)
            if m:
                hits.append(f"{rel}:{n}: {m.group(0)!r} in {line.strip()[:100]!r}")
    assert not hits, "references to documents outside the repository:\n" + "\n".join(hits)


@pytest.mark.parametrize("heading, expected", [
    ("M7 Automatic Loss Balancing", "m7-automatic-loss-balancing"),
    ("T2 Gating and Best Friends", "t2-gating-and-best-friends"),
    ("`--resume` and mixed precision", "--resume-and-mixed-precision"),
    ("1. Install, demo and tests", "1-install-demo-and-tests"),
])
def test_slug_matches_github(heading, expected):
    assert slug(heading) == expected
