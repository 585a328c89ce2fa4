"""iad: intracranial aneurysm detection, from raw DICOM series to a deployable ensemble."""

__version__ = "0.1.0"
