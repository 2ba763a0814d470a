"""Tracking stage of YOLOV4+1Tr (decisions.md §4): frame predictions (§6.2) to the official results JSON (§6.3).

`tracking.tracks` holds the bookkeeping, `tracking.io` the file formats, `tracking.track` the command line.
Nothing here imports TensorFlow.
"""
