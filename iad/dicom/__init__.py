"""Reading DICOM series: headers → sorted, consistent slice layout → pixels in modality units.

Pure data code (numpy + pydicom); no torch import, picklable results for process pools.
"""

from iad.dicom.decode_pool import POOL_KINDS, resolve_workers, warm_pool
from iad.dicom.headers import FrameRef
from iad.dicom.layout import (
    MAX_BAD_SLICE_FRACTION,
    ReadLimits,
    SeriesLayout,
    SeriesReadError,
    SeriesReadWarning,
    SeriesTimeout,
    keep_decoded,
    scan_series,
)
from iad.dicom.pixels import Series, iter_stored_slices, load_series

__all__ = [
    "MAX_BAD_SLICE_FRACTION",
    "POOL_KINDS",
    "FrameRef",
    "ReadLimits",
    "SeriesTimeout",
    "keep_decoded",
    "Series",
    "SeriesLayout",
    "SeriesReadError",
    "SeriesReadWarning",
    "iter_stored_slices",
    "load_series",
    "resolve_workers",
    "scan_series",
    "warm_pool",
]
