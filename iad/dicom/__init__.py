"""Reading DICOM series: headers → sorted, consistent slice layout → pixels in modality units.

Pure data code (numpy + pydicom); no torch import, picklable results for process pools.
"""

from iad.dicom.headers import FrameRef
from iad.dicom.layout import SeriesLayout, SeriesReadError, SeriesReadWarning, scan_series
from iad.dicom.pixels import Series, iter_stored_slices, load_series

__all__ = [
    "FrameRef",
    "Series",
    "SeriesLayout",
    "SeriesReadError",
    "SeriesReadWarning",
    "iter_stored_slices",
    "load_series",
    "scan_series",
]
