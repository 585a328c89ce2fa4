"""How each competition modality looks (tissue intensities, noise) and how it is stored in DICOM."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.uid import UID, CTImageStorage, EnhancedMRImageStorage, MRImageStorage

Range = tuple[float, float]


@dataclass(frozen=True)
class ModalityStyle:
    """Appearance and storage of one competition modality.

    Intensities are in the modality's units (HU for CT, arbitrary scanner units for MR) before the
    per-series MR gain. `artery` and `aneurysm_ratio` are ranges drawn once per series; the
    aneurysm's intensity is artery x ratio (flow voids on T2 stay dark, slow flow in TOF is dimmer).
    """

    dicom_modality: str
    sop_class: UID
    multi_frame: bool
    image_type: tuple[str, ...]
    description: str
    slice_spacing: Range  # mm
    air: float
    scalp: float
    bone: float
    csf: float
    brain: float
    vein: float
    artery: Range
    aneurysm_ratio: Range
    texture: float  # relative amplitude of the smooth grey/white-matter variation
    noise_sd: Range
    gain: Range  # per-series scale of every intensity (MR has no absolute units)
    bias: float  # amplitude of the smooth coil-sensitivity field (0 for CT)
    rician: bool
    value_range: Range  # clipped to this before storing
    header: dict = field(default_factory=dict)  # extra DICOM keywords


CT_RESCALE_INTERCEPT = -1024.0
MR_BITS_STORED = 12

STYLES: dict[str, ModalityStyle] = {
    "CTA": ModalityStyle(
        dicom_modality="CT",
        sop_class=CTImageStorage,
        multi_frame=False,
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
        description="CTA HEAD",
        slice_spacing=(0.8, 2.0),
        air=-1000,
        scalp=30,
        bone=1100,
        csf=8,
        brain=36,
        vein=220,
        artery=(280, 450),
        aneurysm_ratio=(0.9, 1.05),
        texture=0.08,
        noise_sd=(6, 14),
        gain=(1, 1),
        bias=0.0,
        rician=False,
        value_range=(CT_RESCALE_INTERCEPT, 3071),
        header={"KVP": "120", "ConvolutionKernel": "H20f", "RescaleType": "HU", "WindowCenter": "150", "WindowWidth": "650"},
    ),
    "MRA": ModalityStyle(
        dicom_modality="MR",
        sop_class=EnhancedMRImageStorage,
        multi_frame=True,
        image_type=("ORIGINAL", "PRIMARY", "ANGIO", "NONE"),
        description="TOF 3D multi-slab",
        slice_spacing=(0.8, 1.6),
        air=0,
        scalp=380,
        bone=20,
        csf=60,
        brain=230,
        vein=240,
        artery=(800, 1300),
        aneurysm_ratio=(0.75, 1.0),
        texture=0.06,
        noise_sd=(15, 30),
        gain=(0.7, 1.4),
        bias=0.12,
        rician=True,
        value_range=(0, 2**MR_BITS_STORED - 1),
        header={"MRAcquisitionType": "3D", "MagneticFieldStrength": "3", "AcquisitionContrast": "FLOW_ENCODED"},
    ),
    "MRI T2": ModalityStyle(
        dicom_modality="MR",
        sop_class=MRImageStorage,
        multi_frame=False,
        image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
        description="AX T2",
        slice_spacing=(2.0, 3.0),
        air=0,
        scalp=650,
        bone=30,
        csf=1500,
        brain=650,
        vein=80,
        artery=(60, 90),
        aneurysm_ratio=(1.0, 2.5),
        texture=0.12,
        noise_sd=(20, 35),
        gain=(0.7, 1.4),
        bias=0.12,
        rician=True,
        value_range=(0, 2**MR_BITS_STORED - 1),
        header={
            "MRAcquisitionType": "2D",
            "MagneticFieldStrength": "1.5",
            "ScanningSequence": "SE",
            "SequenceVariant": "SK",
            "EchoTime": "100",
            "RepetitionTime": "4000",
        },
    ),
    "MRI T1post": ModalityStyle(
        dicom_modality="MR",
        sop_class=MRImageStorage,
        multi_frame=False,
        image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
        description="AX T1 POST GD",
        slice_spacing=(1.0, 3.0),
        air=0,
        scalp=900,
        bone=40,
        csf=180,
        brain=480,
        vein=800,
        artery=(700, 1000),
        aneurysm_ratio=(0.85, 1.05),
        texture=0.08,
        noise_sd=(15, 30),
        gain=(0.7, 1.4),
        bias=0.12,
        rician=True,
        value_range=(0, 2**MR_BITS_STORED - 1),
        header={
            "MRAcquisitionType": "3D",
            "MagneticFieldStrength": "1.5",
            "ScanningSequence": "GR",
            "SequenceVariant": "SP",
            "EchoTime": "3",
            "RepetitionTime": "8",
        },
    ),
}


def aneurysm_is_bright(modality: str) -> bool:
    """Whether an aneurysm is brighter than its surroundings (dark flow void on T2)."""
    style = STYLES[modality]
    return style.artery[0] > style.brain
