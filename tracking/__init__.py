"""Tracking stage of YOLOV4+1Tr (info/DESIGN.md#tracker): frame predictions to the official results JSON.

`tracking.tracks` holds the bookkeeping, `tracking.io` the file formats, `tracking.track` the command line.
Nothing here imports TensorFlow.
"""
