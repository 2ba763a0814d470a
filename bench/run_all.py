"""`make bench`: runs every bench/bench_*.py script and writes BENCHMARKS.md with the machine and the figures.

Each script prints its own table (median, min and max of several runs); this driver adds the machine (CPU model,
cores, flags), the library versions and the command line, and keeps each script's output verbatim.
"""
from __future__ import annotations

import argparse
import glob
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def machine_description() -> list:
    cpu, flags = platform.processor() or "unknown", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("unknown", "", platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    wanted = ("avx", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "fma", "amx_tile", "amx_bf16")
                    flags = " ".join(f for f in line.split(":", 1)[1].split() if f in wanted)
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    versions = []
    for mod in ("tensorflow", "keras", "numpy", "cv2", "pycocotools"):
        try:
            m = __import__(mod)
            version = getattr(m, "__version__", None)
            if version is None:                          # pycocotools has no __version__: ask its metadata
                from importlib import metadata
                version = metadata.version(mod)
            versions.append(f"{mod} {version}")
        except ImportError:
            versions.append(f"{mod} not installed")
    return [f"- CPU: {cpu} ({os.cpu_count()} logical cores; flags: {flags or 'n/a'})",
            f"- memory: {mem or 'n/a'}", f"- Python {platform.python_version()} on {platform.platform()}",
            f"- {', '.join(versions)}", f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}"]


def load_average() -> str:
    """The 1-minute load average (runnable processes; above the core count, other jobs compete for the CPU)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--only", default=None, help="run only scripts whose name contains this")
    args = ap.parse_args(argv)
    from fileio import InputError, check_writable_file
    try:
        check_writable_file(args.out, "--out")
    except InputError as e:
        sys.exit(f"error: {e}")
    scripts = sorted(glob.glob(os.path.join(ROOT, "bench", "bench_*.py")))
    if args.only:
        scripts = [s for s in scripts if args.only in os.path.basename(s)]
    sections = ["# Benchmarks", "", "Written by `make bench` (bench/run_all.py). Machine:", ""] + machine_description()
    sections += ["", "Wall-clock figures depend on what else runs: each script's load average is shown beside it, "
                 "and where a script reports CPU (process) time too, that is the steadier figure on a shared "
                 "machine."]
    for i, script in enumerate(scripts, 1):
        name = os.path.relpath(script, ROOT)
        print(f"[{i}/{len(scripts)}] {name}", flush=True)
        t0, load0 = time.time(), load_average()
        r = subprocess.run([sys.executable, script], cwd=ROOT, capture_output=True, text=True)
        took = time.time() - t0
        out = r.stdout.strip() + (f"\n(stderr tail)\n{r.stderr.strip()[-2000:]}" if r.returncode else "")
        print(out, flush=True)
        sections += ["", f"## `python {name}`", "",
                     f"exit code {r.returncode}, {took:.0f} s; 1-minute load average {load0} before, "
                     f"{load_average()} after", "", "```", out, "```"]
    from fileio import atomic_write_text
    atomic_write_text(args.out, "\n".join(sections) + "\n")
    print(f"benchmarks written to {args.out}")


if __name__ == "__main__":
    main()
