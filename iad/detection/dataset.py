"""An ultralytics YOLODataset whose images come from the series cache (the trainer's documented hook).

ultralytics reads images by file path; subclassing its dataset (`get_img_files`, `get_labels`,
`load_image`) keeps all of its augmentation, letterboxing and collation while the pixels come from the
memory-mapped uint8 volumes every other stage reads. Nothing is exported as PNG.
"""

from __future__ import annotations

from collections import OrderedDict
import math

import cv2
import numpy as np
import pandas as pd
from ultralytics.data.dataset import YOLODataset

from iad.detection.images import mean_stack, slice_stack
from iad.detection.labels import LABELS_COL, MEAN_IMAGE, SLICE_COL, parse_lines
from iad.labels import UID_COL
from iad.preprocessing import PreprocessConfig, SeriesCache

OPEN_VOLUMES = 32  # memory-mapped volumes a dataset keeps open


class CachedSliceDataset(YOLODataset):
    """YOLO samples of an item table (`iad.detection.labels`), read from the series cache.

    img_path: the item table (CSV) of one split; cache_source: {"root", "preprocess", "image",
    "offsets"} as the run's data.yaml records them (`image` is "slices" for 2.5D stacks, "mean" for mean images).
    """

    def __init__(self, *args, cache_source: dict, **kwargs):
        self.series_cache = SeriesCache(cache_source["root"], PreprocessConfig(**cache_source["preprocess"]))
        self.offsets = tuple(int(o) for o in cache_source.get("offsets", (-1, 0, 1)))
        self._volumes: OrderedDict[str, np.ndarray] = OrderedDict()
        super().__init__(*args, **kwargs)

    def get_img_files(self, img_path: str | list[str]) -> list[str]:
        self.items = pd.read_csv(img_path, dtype={UID_COL: str}, keep_default_na=False)
        if not len(self.items):
            raise ValueError(f"{img_path}: no detector items (no boxes in this split?)")
        names = [f"{uid}/{'mean' if z == MEAN_IMAGE else z}" for uid, z in zip(self.items[UID_COL], self.items[SLICE_COL])]
        self.item_of = dict(zip(names, zip(self.items[UID_COL], self.items[SLICE_COL].astype(int))))
        return names

    def get_labels(self) -> list[dict]:
        labels = []
        for uid, name, text in zip(self.items[UID_COL], self.im_files, self.items[LABELS_COL]):
            cls, boxes = parse_lines(text)
            labels.append({"im_file": name, "shape": self.series_cache.meta(uid).shape[1:], "cls": cls,
                           "bboxes": boxes, "segments": [], "keypoints": None, "normalized": True,
                           "bbox_format": "xywh"})
        return labels

    def raw_image(self, i: int) -> np.ndarray:
        """H×W×C uint8 image of item i, channels reversed: ultralytics treats loaded images as BGR and
        flips them to RGB, so the network sees slices z + offsets in order (as `LoadedDetector.detect` feeds)."""
        uid, z = self.item_of[self.im_files[i]]  # by name: validation's rect batching reorders im_files and labels
        if z == MEAN_IMAGE:
            return mean_stack(self.series_cache.mean_image(uid))
        return np.ascontiguousarray(slice_stack(self._volume(uid), z, self.offsets)[..., ::-1])

    def _volume(self, uid: str) -> np.ndarray:
        if uid in self._volumes:
            self._volumes.move_to_end(uid)
        else:
            self._volumes[uid] = self.series_cache.volume(uid)
            if len(self._volumes) > OPEN_VOLUMES:
                self._volumes.popitem(last=False)
        return self._volumes[uid]

    def load_image(self, i: int, rect_mode: bool = True, resize_short: bool = False):
        """(image resized to imgsz, original (h, w), resized (h, w)), as ultralytics' `load_image`."""
        if self.ims[i] is not None:
            return self.ims[i], self.im_hw0[i], self.im_hw[i]
        im = self.raw_image(i)
        h0, w0 = im.shape[:2]
        size = max(self.imgsz) if isinstance(self.imgsz, (tuple, list)) else self.imgsz
        if rect_mode:
            r = size / (min(h0, w0) if resize_short else max(h0, w0))
            if r != 1:
                w, h = math.ceil(w0 * r), math.ceil(h0 * r)
                if not resize_short:
                    w, h = min(w, size), min(h, size)
                im = cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR)
        elif (h0, w0) != (size, size):
            im = cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR)
        if self.augment:  # ultralytics' mosaic buffer: recently loaded images stay in memory
            self.ims[i], self.im_hw0[i], self.im_hw[i] = im, (h0, w0), im.shape[:2]
            self.buffer.append(i)
            if 1 < len(self.buffer) >= self.max_buffer_length:
                j = self.buffer.pop(0)
                self.ims[j], self.im_hw0[j], self.im_hw[j] = None, None, None
        return im, (h0, w0), im.shape[:2]

    def __getstate__(self) -> dict:  # loader workers reopen their own memory maps
        return {**self.__dict__, "_volumes": OrderedDict()}

