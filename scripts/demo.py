"""`make demo`: the whole YOLOV4+1Tr pipeline on the built-in synthetic YouTube-VIS dataset, stage by stage.

dataset -> k-means anchors -> training (tiny preset, within a time budget) -> per-frame inference on the
held-out `valid` split -> tracking (lam 0, 0.5, 1) -> YouTube-VIS evaluation (AP and HOTA) -> diagnosis -> the
tracker's options side by side (scripts/tracker_table.py) -> overlay videos, a concatenated demo video and a GIF
-> plots.
Every stage reuses its outputs when they exist (pass --fresh, or FRESH=1 to make, to redo everything) and the run
ends with a summary: the 12 stats, where every output is and how long each stage took.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
LAMS = ["0", "0.5", "1"]
HOTA_NAMES = ["HOTA", "DetA", "AssA", "LocA"]  # TrackEval's, in the metrics files since scripts/evaluate.py has them
DEFAULT_BUDGET_MINUTES = 13


class Demo:
    def __init__(self, args):
        self.args = args
        self.data = args.data
        self.run = args.run_dir
        self.timings = []
        self.py = sys.executable

    def path(self, *parts):
        return os.path.join(self.run, *parts)

    def stage(self, name, outputs, commands):
        """Run `commands` (lists of argv) unless every path in `outputs` exists; time it."""
        t0 = time.time()
        if all(os.path.exists(p) for p in outputs) and not self.args.fresh_stage(name):
            print(f"\n== {name}: reusing {', '.join(os.path.relpath(p, ROOT) for p in outputs)}", flush=True)
            self.timings.append((name, 0.0, "reused"))
            return
        print(f"\n== {name}", flush=True)
        for cmd in commands:
            print("$ " + " ".join(os.path.relpath(c, ROOT) if os.path.isabs(c) else c for c in cmd), flush=True)
            r = subprocess.run(cmd, cwd=ROOT)
            if r.returncode != 0:
                sys.exit(f"demo: stage '{name}' failed (exit code {r.returncode}); fix the error above and run "
                         f"`make demo` again (finished stages are reused)")
        self.timings.append((name, time.time() - t0, "ran"))

    def check_dataset_size(self, train_root, valid_root):
        """A dataset written with other video counts (an earlier demo's 12 `valid` videos) is written again, and
        the run directory trained or evaluated on it is redone."""
        a = self.args
        for root, want in ((train_root, a.train_videos), (valid_root, a.valid_videos)):
            path = os.path.join(root, "instances.json")
            if not os.path.exists(path):
                continue
            with open(path) as f:
                have = len(json.load(f)["videos"])
            if have != want:
                print(f"demo: {os.path.relpath(path, ROOT)} has {have} videos, this demo asks for {want}: writing the "
                      f"dataset again and redoing every stage", flush=True)
                for p in (self.data, self.run):
                    if os.path.exists(p):
                        shutil.rmtree(p)
                os.makedirs(self.run, exist_ok=True)
                return

    def run_all(self):
        a = self.args
        os.makedirs(self.run, exist_ok=True)
        train_root, valid_root = os.path.join(self.data, "train"), os.path.join(self.data, "valid")
        gt = os.path.join(valid_root, "instances.json")
        self.check_dataset_size(train_root, valid_root)
        self.stage("dataset", [os.path.join(train_root, "instances.json"), gt],
                   [[self.py, "scripts/make_synthetic_ytvis.py", "--out", self.data, "--seed", str(a.seed),
                     "--train-videos", str(a.train_videos), "--valid-videos", str(a.valid_videos)]])

        from config import apply_overrides, get_preset
        size = apply_overrides(get_preset("tiny"), a.set).model.input_size   # anchors at the trained input size
        anchors = self.path("anchors_shapes.txt")
        self.stage("anchors", [anchors],
                   [[self.py, "clusters.py", "--ann", os.path.join(train_root, "instances.json"), "--levels", "4",
                     "--per-level", "6", "--size", str(size), "--out", anchors, "--seed", str(a.seed),
                     "--plot", self.path("plots", "anchors.png")]])

        done = self.path("train_done.json")
        train_cmd = [self.py, "train.py", "--preset", "tiny", "--data", train_root, "--run-dir", self.run,
                     "--epochs", str(a.epochs), "--set", f"model.anchors_file={anchors}"]
        if a.budget_minutes:
            train_cmd += ["--budget-minutes", f"{a.budget_minutes:g}"]
        else:
            train_cmd += ["--set", f"train.steps_per_epoch={a.steps_per_epoch}"]
        train_cmd += sum([["--set", s] for s in a.set], [])
        # an earlier run there is continued, or (a fresh stage) started over: train.py refuses to guess
        resume = os.path.exists(self.path("checkpoints")) and not a.fresh_stage("train")
        train_cmd.append("--resume" if resume else "--overwrite")
        self.stage("train", [done], [train_cmd])

        frames = self.path("valid_frames.json")
        self.stage("inference", [frames], [[self.py, "tracker.py", "--run-dir", self.run, "--data", valid_root,
                                            "--out", frames]])

        results = {lam: self.path(f"results_lam{lam}.json") for lam in LAMS}
        metrics = {lam: self.path(f"metrics_lam{lam}.json") for lam in LAMS}
        self.stage("tracking", list(results.values()),
                   [[self.py, "-m", "tracking.track", "--pred", frames, "--out", results[lam], "--lam", lam,
                     "--config", self.path("config.yaml")]
                    for lam in LAMS])
        self.stage("evaluation", list(metrics.values()),
                   [[self.py, "scripts/evaluate.py", "--gt", gt, "--results", results[lam], "--out", metrics[lam]]
                    + (["--plot", self.path("plots")] if lam == "0.5" else []) for lam in LAMS])
        diagnosis = self.path("diagnosis.json")
        self.stage("diagnosis", [diagnosis],
                   [[self.py, "scripts/diagnose.py", "--gt", gt, "--pred", frames, "--results", results["0.5"],
                     "--config", self.path("config.yaml"), "--out", diagnosis]])

        table = self.path("tracker_table.json")
        self.stage("tracker table", [table],
                   [[self.py, "scripts/tracker_table.py", "--gt", gt, "--pred", frames,
                     "--config", self.path("config.yaml"), "--out", table]])

        overlay = self.path("overlay")
        demo_mp4, demo_gif = self.path("demo.mp4"), self.path("demo.gif")
        self.stage("overlay", [demo_mp4, demo_gif], [
            [self.py, "scripts/overlay_vis_on_video.py", "--results", results["0.5"], "--data", valid_root,
             "--out-dir", overlay, "--max-videos", str(a.overlay_videos), "--fps", "6"],
            [self.py, "scripts/concat_vis_videos.py", "--input", overlay, "--output", demo_mp4, "--fps", "6"],
            [self.py, "scripts/shrink_vis_video.py", "-i", demo_mp4, "-o", demo_gif, "--gif", "--seconds", "8",
             "--fps", "6", "--width", "480"],
        ])
        t0 = time.time()
        curves = plot_training_curves(self.path("metrics.jsonl"), self.path("plots", "training_curves.png"))
        self.timings.append(("plots", time.time() - t0, "ran"))
        self.summary(metrics, results, curves, diagnosis, table)

    def machine_and_budget(self):
        """The machine (CPU model, AVX2 / AVX-512 / AMX) and what training did with its budget, from the run's
        train_done.json."""
        from budget import describe_machine, machine
        self.machine_info = machine()
        done = {}
        if os.path.exists(self.path("train_done.json")):
            with open(self.path("train_done.json")) as f:
                done = json.load(f)
        self.training_info = {k: done.get(k) for k in ("step", "epochs", "images_per_s", "train_seconds",
                                                         "budget_minutes", "machine")}
        line = f"{done.get('step', '?')} steps"
        if done.get("images_per_s"):
            line += f" at {done['images_per_s']:.1f} img/s"
        if done.get("train_seconds"):
            line += f" in {done['train_seconds'] / 60:.1f} min"
        line += (f", budget {done['budget_minutes']:g} min" if done.get("budget_minutes")
                 else " (fixed step count, no budget)")
        trained_on = done.get("machine")
        if trained_on and describe_machine(trained_on) != describe_machine(self.machine_info):
            line += f" (trained on {describe_machine(trained_on)})"
        return describe_machine(self.machine_info), line

    def summary(self, metrics, results, curves, diagnosis, table=None):
        stats = {lam: json.load(open(p)) for lam, p in metrics.items()}
        print("\n" + "=" * 78)
        print("YOLOV4+1Tr demo summary (held-out synthetic `valid` split, YouTube-VIS video AP)")
        print("=" * 78)
        machine, budget_line = self.machine_and_budget()
        print(f"machine: {machine}\ntraining: {budget_line}")
        print(f"{'stat':<8}" + "".join(f"{'lam=' + lam:>12}" for lam in LAMS))
        for k in STAT_NAMES + [k for k in HOTA_NAMES if all(k in stats[lam] for lam in LAMS)]:
            print(f"{k:<8}" + "".join(f"{stats[lam][k]:>12.3f}" for lam in LAMS))
        if table and os.path.exists(table):  # scripts/tracker_table.py: the tracker's options, AssA apart from DetA
            from tracker_table import format_table
            print("\ntracker options x lam (scripts/tracker_table.py):\n" + format_table(json.load(open(table))))
        from diagnose import report
        diag = json.load(open(diagnosis))
        ident = diag["tracks"]["crossings"]
        print("\nwhat bounds it (scripts/diagnose.py, lam 0.5):\n" + report(diag))
        print("\noutputs:")
        for label, p in [("dataset", self.data), ("run directory", self.run),
                         ("checkpoints", self.path("checkpoints")), ("TensorBoard logs", self.path("logs")),
                         ("frame predictions", self.path("valid_frames.json")),
                         ("results (lam 0.5)", results["0.5"]), ("metrics (lam 0.5)", metrics["0.5"]),
                         ("diagnosis", diagnosis), ("tracker table", table),
                         ("overlay videos", self.path("overlay")), ("demo video", self.path("demo.mp4")),
                         ("demo GIF", self.path("demo.gif")), ("plots", self.path("plots")),
                         ("training curves", curves)]:
            if p:
                print(f"  {label:<20} {os.path.relpath(p, ROOT)}")
        print("\nstage times:")
        total = 0.0
        for name, secs, how in self.timings:
            total += secs
            print(f"  {name:<12} {secs:8.1f} s" + ("  (reused)" if how == "reused" else ""))
        print(f"  {'total':<12} {total:8.1f} s")
        summary = {"stats": stats, "identity": ident, "timings": {n: s for n, s, _ in self.timings},
                   "machine": self.machine_info, "training": self.training_info}
        from fileio import atomic_write_text
        atomic_write_text(self.path("demo_summary.json"), json.dumps(summary, indent=2))
        print(f"\nsummary written to {os.path.relpath(self.path('demo_summary.json'), ROOT)}")


def plot_training_curves(metrics_jsonl: str, out_png: str):
    """Training loss and validation frame mAP per epoch from the run's metrics.jsonl."""
    if not os.path.exists(metrics_jsonl):
        return None
    rows = [json.loads(line) for line in open(metrics_jsonl) if line.strip()]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key in sorted({k for r in rows for k in r if k.startswith("loss")}):
        axes[0].plot(epochs, [r.get(key) for r in rows], marker="o", label=key)
    axes[0].set_xlabel("epoch"), axes[0].set_title("training losses"), axes[0].legend(fontsize=7)
    for key in sorted({k for r in rows for k in r if k.startswith("val_")}):
        axes[1].plot(epochs, [r.get(key) for r in rows], marker="o", label=key)
    axes[1].set_xlabel("epoch"), axes[1].set_title("validation (frame mask mAP)"), axes[1].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out_png), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "shapes"), help="synthetic dataset folder")
    ap.add_argument("--run-dir", default=os.path.join(ROOT, "runs", "demo"), help="run directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh", action="store_true", help="redo every stage (FRESH=1 make demo)")
    # 150 training videos (the generator's default is 48): ~590 instances instead of ~200, which the class head
    # memorises (info/RESULTS.md#2026-11-22-150-training-videos).
    ap.add_argument("--train-videos", type=int, default=150, help="training videos of the synthetic dataset")
    # 48 held-out videos (~200 objects): the first 12 (53 objects) held 5 objects visible in only 1-2 frames, which
    # no kept track can cover (info/RESULTS.md#2026-12-01-48-video-valid-split).
    ap.add_argument("--valid-videos", type=int, default=48, help="held-out `valid` videos of the synthetic dataset")
    # Training ends within this many minutes, validation included (train.py --budget-minutes): the step count
    # follows from the rate measured after the warm-up, so the demo takes about as long on any CPU. The other
    # stages and the set-up take ~5 minutes on 2 cores, so `make demo` ends within ~20.
    ap.add_argument("--budget-minutes", type=float, default=DEFAULT_BUDGET_MINUTES,
                    help="training time budget in minutes (0: a fixed --epochs x --steps-per-epoch instead)")
    ap.add_argument("--epochs", type=int, default=4, help="training epochs (each ends with validation)")
    # One pass over the demo's ~2,700 training frames is 341 steps of 8 (--budget-minutes 0 runs 4 x 340).
    ap.add_argument("--steps-per-epoch", type=int, default=340,
                    help="training steps an epoch with --budget-minutes 0 (0: one pass over the frames, 341 "
                         "steps here)")
    ap.add_argument("--overlay-videos", type=int, default=6, help="validation videos drawn in the overlay")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training config override")
    args = ap.parse_args(argv)
    args.data, args.run_dir = os.path.abspath(args.data), os.path.abspath(args.run_dir)
    if args.fresh:
        for p in (args.data, args.run_dir):
            if os.path.exists(p):
                print(f"FRESH: removing {os.path.relpath(p, ROOT)}")
                shutil.rmtree(p)
    args.fresh_stage = lambda name: False
    t0 = time.time()
    Demo(args).run_all()
    print(f"demo finished in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
