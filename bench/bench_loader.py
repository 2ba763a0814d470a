"""Benchmark of the data layer (loader_ytvos.py): frames/s delivered by the augmented training pipeline at 416 on
the synthetic dataset and on generated 1280x720 JPEG frames (median, min and max of several passes), time to the
first batch, what bounds it (the GIL-bound Python half and the image half of a sample, each timed alone), and the
time and peak memory of indexing an annotation file of YouTube-VIS 2021 train size (about 3,000 videos, 6,000
tracks x 30). Other processes on the machine make the figures noisy: compare medians.

    python bench/bench_loader.py [--frames 400] [--repeats 5] [--skip-index]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def machine():
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import cv2
    import numpy as np
    import tensorflow as tf
    return (f"CPU {model}, {os.cpu_count()} cores; python {platform.python_version()}, tensorflow {tf.__version__}, "
            f"numpy {np.__version__}, opencv {cv2.__version__}")


class Progress:
    """Progress of `total` steps on stderr: one line rewritten in place on a terminal, otherwise a full line at
    about every 10 % (no carriage returns running together in a log file)."""

    def __init__(self, label: str, total: int, stream=sys.stderr):
        self.label, self.total, self.stream = label, max(1, int(total)), stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.every = max(1, self.total // 10)

    def update(self, done: int):
        if self.tty:
            end = "\n" if done >= self.total else ""
            print(f"\r{self.label}: {done}/{self.total}", end=end, file=self.stream, flush=True)
        elif done % self.every == 0 or done >= self.total:
            print(f"{self.label}: {done}/{self.total}", file=self.stream, flush=True)


def throughput(cfg, split_root, n_frames, repeats, label):
    """Frames/s of the augmented training pipeline over `repeats` timed passes of n_frames each."""
    import numpy as np

    import loader_ytvos as L
    ann = os.path.join(split_root, "instances.json")
    t0 = time.perf_counter()
    ds = L.build_dataset(cfg, ann, os.path.join(split_root, "JPEGImages"), training=True).repeat()
    it = iter(ds)
    next(it)
    first = time.perf_counter() - t0
    bs = cfg.train.batch_size
    for _ in range(2):   # let AUTOTUNE settle
        next(it)
    n = max(1, n_frames // bs)
    rates = []
    progress = Progress(f"{label}: batches", n * repeats)
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            next(it)
            progress.update(r * n + i + 1)
        rates.append(n * bs / (time.perf_counter() - t0))
    rates = np.array(rates)
    print(f"{label}: {np.median(rates):.1f} frames/s median (min {rates.min():.1f}, max {rates.max():.1f}) over "
          f"{repeats} passes of {n * bs} frames at {cfg.model.input_size} with augmentation (batch {bs}); first "
          f"batch after {first:.2f} s")


def halves(cfg, split_root, n_frames, label):
    """Milliseconds a frame of each half of a sample, timed alone in this thread: the Python half
    (prepare_sample: file read, header, targets) holds the GIL, so it bounds the pipeline at 1000 / ms frames/s
    whatever the cores; the image half (render_image: TF decode, cv2 resize, HSV, paste) runs on every core."""
    import numpy as np
    import tensorflow as tf

    import loader_ytvos as L
    ytvis = L.load_annotations(os.path.join(split_root, "instances.json"))
    root = os.path.join(split_root, "JPEGImages")
    rng = np.random.default_rng(0)
    samples = ytvis.samples()
    jobs = [(samples[i % len(samples)], rng.random(len(L.DRAWS))) for i in range(min(n_frames, 200))]
    t0 = time.perf_counter()
    prepared = [L.prepare_sample(cfg, ytvis, root, vid, t, d)[:2] for (vid, t), d in jobs]
    py_ms = (time.perf_counter() - t0) / len(jobs) * 1e3
    render = tf.function(lambda data, recipe, draws: L.render_image(data, recipe, draws, cfg, True))
    render(tf.constant(prepared[0][0]), tf.constant(prepared[0][1]), tf.constant(jobs[0][1]))   # trace
    t0 = time.perf_counter()
    for (data, recipe), (_, d) in zip(prepared, jobs):
        render(tf.constant(data), tf.constant(recipe), tf.constant(d))
    img_ms = (time.perf_counter() - t0) / len(jobs) * 1e3
    print(f"{label}: Python half {py_ms:.2f} ms/frame (GIL: at most {1000 / py_ms:.0f} frames/s), image half "
          f"{img_ms:.2f} ms/frame on one stream (decode, resize, HSV; parallel over the {os.cpu_count()} cores)")


def write_ytvis_size_file(path, n_videos=3000, n_tracks=6000, length=30, seed=0):
    """A YouTube-VIS-2021-train-sized JSON with uncompressed RLE at 1280x720 (about 2 runs per object column)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    h, w = 720, 1280
    pool = []
    for _ in range(256):
        n_cols = int(rng.integers(20, 300))
        runs = []
        x0 = int(rng.integers(0, w - n_cols))
        runs.append(x0 * h + int(rng.integers(0, 400)))
        for _ in range(n_cols):
            on = int(rng.integers(20, 300))
            runs += [on, h - on]
        runs[-1] = h * w - sum(runs[:-1])
        pool.append(json.dumps({"size": [h, w], "counts": runs}, separators=(",", ":")))
    with open(path, "w") as f:
        f.write('{"info":{},"licenses":[],"categories":[')
        f.write(",".join(f'{{"id":{k},"name":"c{k}","supercategory":"x"}}' for k in range(1, 41)))
        f.write('],"videos":[')
        f.write(",".join(json.dumps({"id": v + 1, "width": w, "height": h, "length": length,
                                     "file_names": [f"v{v:05d}/{5 * t:05d}.jpg" for t in range(length)]})
                         for v in range(n_videos)))
        f.write('],"annotations":[')
        for a in range(n_tracks):
            segs = [pool[int(rng.integers(256))] if rng.random() < 0.9 else "null" for _ in range(length)]
            boxes = ["[1.0,2.0,30.0,40.0]" if s != "null" else "null" for s in segs]
            areas = ["1200" if s != "null" else "null" for s in segs]
            f.write(("," if a else "") + f'{{"id":{a + 1},"video_id":{a % n_videos + 1},"category_id":'
                    f'{a % 40 + 1},"iscrowd":0,"height":{h},"width":{w},"length":1,"segmentations":['
                    f'{",".join(segs)}],"bboxes":[{",".join(boxes)}],"areas":[{",".join(areas)}]}}')
        f.write("]}")


def index_bench(tmp):
    path = os.path.join(tmp, "ytvis2021_size.json")
    t0 = time.perf_counter()
    write_ytvis_size_file(path)
    print(f"generated {path} ({os.path.getsize(path) / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    # Every frame file is a symlink to one 1280x720 JPEG, so the pipeline can run over the whole index.
    import cv2
    import numpy as np
    images = os.path.join(tmp, "ytvis2021_size_frames")
    jpeg = os.path.join(tmp, "frame_1280x720.jpg")
    cv2.imwrite(jpeg, np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8))
    for v in range(3000):
        os.makedirs(os.path.join(images, f"v{v:05d}"))
        for t in range(30):
            os.symlink(jpeg, os.path.join(images, f"v{v:05d}", f"{5 * t:05d}.jpg"))
    code = ("import time, sys, resource; sys.path.insert(0, %r); import loader_ytvos as L, config; "
            "t = time.perf_counter(); y = L.load_annotations(%r); dt = time.perf_counter() - t; "
            "n = sum(len(f) for fr in y.frame_index.values() for f in fr); "
            "cfg = config.apply_overrides(config.get_preset('yolov4p1'), ['train.batch_size=8']); "
            "t = time.perf_counter(); ds = L.build_dataset(cfg, %r, %r, training=True, ytvis=y); next(iter(ds)); "
            "first = time.perf_counter() - t; "
            "print(dt, n, first, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)") % (ROOT, path, path, images)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    dt, n, first, rss_kb = float(out[0]), int(out[1]), float(out[2]), int(out[3])
    print(f"index of a YouTube-VIS-2021-train-sized file ({os.path.getsize(path) / 1e6:.0f} MB, 3000 videos, "
          f"6000 tracks, {n} frame instances): {dt:.1f} s; then the first augmented batch of 8 at 416 (pipeline "
          f"built over all 90,000 frames, TensorFlow import included): {first:.1f} s; peak RSS {rss_kb / 1e6:.2f} GB")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=400, help="frames timed per pass")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes per dataset (median, min, max)")
    ap.add_argument("--shapes", default=os.path.join(ROOT, "data", "shapes", "train"),
                    help="synthetic split to time (generated in a temp dir when missing)")
    ap.add_argument("--skip-index", action="store_true", help="skip the YouTube-VIS-size indexing test")
    args = ap.parse_args(argv)
    import config
    import make_synthetic_ytvis as gen
    print(machine())
    cfg = config.apply_overrides(config.get_preset("yolov4p1"), ["train.batch_size=8"])
    with tempfile.TemporaryDirectory() as tmp:
        shapes = args.shapes
        if not os.path.isfile(os.path.join(shapes, "instances.json")):
            gen.main(["--out", os.path.join(tmp, "shapes"), "--train-videos", "12", "--valid-videos", "0", "--quiet"])
            shapes = os.path.join(tmp, "shapes", "train")
        throughput(cfg, shapes, args.frames, args.repeats, "synthetic 320x180")
        halves(cfg, shapes, args.frames, "synthetic 320x180")
        t0 = time.perf_counter()
        gen.main(["--out", os.path.join(tmp, "hd"), "--train-videos", "6", "--valid-videos", "0", "--min-frames",
                  "16", "--max-frames", "16", "--width", "1280", "--height", "720", "--quiet"])
        print(f"generated 96 frames at 1280x720 in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        throughput(cfg, os.path.join(tmp, "hd", "train"), args.frames, args.repeats, "1280x720 JPEG")
        halves(cfg, os.path.join(tmp, "hd", "train"), args.frames, "1280x720 JPEG")
        if not args.skip_index:
            index_bench(tmp)


if __name__ == "__main__":
    main()
