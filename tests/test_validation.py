"""Validation during training (validation.py): the frame mAP counts every stored detection, the confusion
matrix only the confident ones."""
import numpy as np
import pytest


def test_validation_map_counts_detections_below_conf_thresh(tmp_path, monkeypatch):
    """A correct detection scored 0.3 is above the storage floor (0.05) but below conf_thresh (0.5): the COCO
    frame mAP must see it (AP 1), the confusion matrix must not (0 matched)."""
    import cv2
    from pycocotools import mask as mask_utils

    import config
    import model as model_lib
    import validation
    cfg = config.apply_overrides(config.get_preset("tiny"), ["model.input_size=64", "model.num_classes=1",
                                                              "model.max_prop=4", "model.pre_nms_limit=4"])
    cfg.data.categories = [{"id": 1, "name": "disc"}]
    h, w = 32, 64
    cv2.imwrite(str(tmp_path / "f.jpg"), np.zeros((h, w, 3), np.uint8))
    gt_mask = np.zeros((h, w), np.uint8, order="F")
    gt_mask[8:24, 16:48] = 1
    frames = [{"id": 7, "height": h, "width": w, "video_id": 1, "frame_index": 0,
               "instances": [{"category_id": 1, "segmentation": mask_utils.encode(gt_mask), "iscrowd": 0}]}]

    def fake_infer(inputs, training=False):
        n = len(inputs["image"])
        boxes = np.zeros((n, 4, 4), np.float32)
        boxes[:, 0] = [16, 8, 48, 24]
        scores = np.zeros((n, 4), np.float32)
        scores[:, 0] = 0.3
        return {"boxes": boxes, "mask_boxes": boxes, "scores": scores, "classes": np.ones((n, 4), np.int32),
                "class_probs": np.ones((n, 4, 1), np.float32), "masks": np.ones((n, 4, 28, 28), np.float32),
                "num_valid": np.ones((n,), np.int32), "image_hw": np.asarray(inputs["image_hw"])}

    monkeypatch.setattr(model_lib, "copy_weights_by_name", lambda src, dst: 0)
    val, _ = validation.validate(cfg, None, fake_infer, (frames, lambda f: str(tmp_path / "f.jpg")),
                            str(tmp_path / "cm.png"))
    assert val["val_frame_mAP50"] == pytest.approx(1.0) and val["val_frame_mAP"] == pytest.approx(1.0)
    assert val["val_matched"] == 0
