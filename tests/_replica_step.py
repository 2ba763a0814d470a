"""Helper run in a subprocess by test_train.py: one training step on 1 device and on 2 logical CPU devices
(MirroredStrategy) from the same initial weights and the same global batch; prints the largest differences.
Logical devices must be configured before TensorFlow initialises, hence a separate process."""
import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf

# "frozen_bn": every BN in inference mode, so each example's forward pass is independent of the split and the
# two runs differ only by float summation order; "sync_bn": synchronised BN (info/DESIGN.md#m14-synchronised-bn).
FREEZE_BN = sys.argv[1:] == ["frozen_bn"]

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import config  # noqa: E402
import model as model_lib  # noqa: E402
import train  # noqa: E402

# sync_bn on: per-replica BN statistics depend on the split (info/DESIGN.md#m14-synchronised-bn). No clipping, so a
# wrongly scaled gradient cannot hide behind the global-norm clip.
cfg = config.apply_overrides(config.get_preset("tiny"), [
    "model.input_size=64", "model.num_classes=3", f"model.sync_bn={'false' if FREEZE_BN else 'true'}", "train.batch_size=4",
    "train.lr=0.001", "train.warmup_steps=0", "train.lr_schedule=constant", "train.clip_norm=0",
    # a low mask IoU threshold gives the random proposals positives, a different number on each replica (the
    # mask head then runs on a different number of ROIs per replica)
    "model.mask_iou_thresh=0.05"])
rng = np.random.default_rng(0)
B, N, R = 4, 3, cfg.mask_res
boxes = np.zeros((B, N, 4), np.float32)
labels = np.zeros((B, N), np.int32)
masks = np.zeros((B, N, R, R), np.uint8)
for b in range(B):
    for n in range(b % 3 + 1):     # 1..3 instances: the replicas hold different numbers of positives
        x1, y1 = rng.uniform(0, 30, 2)
        w, h = rng.uniform(12, 30, 2)
        boxes[b, n] = [x1, y1, min(64, x1 + w), min(64, y1 + h)]
        labels[b, n] = n + 1
        s = R / 64
        masks[b, n, int(y1 * s):int((y1 + h) * s), int(x1 * s):int((x1 + w) * s)] = 1
batch = {"image": rng.uniform(0, 1, (B, 64, 64, 3)).astype(np.float32), "boxes": boxes, "labels": labels,
         "masks": masks, "num_instances": (labels > 0).sum(1).astype(np.int32)}
ds = tf.data.Dataset.from_tensors(batch)

tf.keras.utils.set_random_seed(0)
init = model_lib.build_model(cfg, "train", mask_positives=True).get_weights()   # as train.build_state


def one_step(strategy):
    with strategy.scope():
        model = model_lib.build_model(cfg, "train", mask_positives=True)
        model.set_weights(init)
        if FREEZE_BN:
            for layer in model.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
        variables = train.trainable_vars(model)
        opt = train.make_optimizer(cfg, train.make_schedule(cfg, 10))
        opt.build(variables)
    step = train.make_train_step(model, opt, cfg, strategy, variables)
    logs = step(next(iter(strategy.experimental_distribute_dataset(ds))), tf.constant(0.0))
    return model.get_weights(), {k: float(v) for k, v in logs.items()}


w1, l1 = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"))
w2, l2 = one_step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
d1 = np.concatenate([(a - b).ravel() for a, b in zip(w1, init)])
d12 = np.concatenate([(a - b).ravel() for a, b in zip(w1, w2)])
print(json.dumps({"update_norm": float(np.linalg.norm(d1)), "diff_norm": float(np.linalg.norm(d12)),
                  "logs_one": l1, "logs_two": l2}))
