"""What the train.py subprocess tests share: the small run's settings and how to start and read one."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
# Small enough for 2 shared cores: 64 px input, 2-frame batches, 3 steps an epoch, a 1-video validation split.
SMALL = ["--preset", "tiny", "--set", "model.input_size=64", "--set", "train.batch_size=2",
         "--set", "train.steps_per_epoch=3", "--set", "train.log_every=1", "--set", "data.mask_res=32",
         "--set", "train.warmup_steps=0", "--set", "train.val_max_frames=4", "--set", "data.max_instances=4"]


def train_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_train(args, timeout=180, **env):
    return subprocess.run([PY, os.path.join(ROOT, "train.py")] + args, cwd=ROOT, env=train_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def read_ckpt(prefix):
    import tensorflow as tf
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def ckpt_key(values, *parts):
    hits = sorted(k for k in values if all(p in k for p in parts))
    assert hits, f"no checkpoint key containing {parts}"
    return hits[0]
