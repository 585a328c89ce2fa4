"""Self-contained deployable bundle: weights-only model files + the configs they need + the blend."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from iad.contract import BUNDLE_FILE, BUNDLE_MEMBERS_DIR, MODEL_FILE_SUFFIX, fold_name
from iad.inference.loading import export_model
from iad.inference.localize import export_localizer
from iad.inference.predictor import Predictor


def export_bundle(predictor: Predictor, out_dir: str | Path) -> Path:
    """Write `out_dir/bundle.json` and `out_dir/members/<name>/fold_<i>.pt` (and the predictor's aneurysm
    detector files, sha256 recorded, in `out_dir/detectors/aneurysm/`); `Predictor.load(out_dir)` reads it.

    The bundle needs neither the training outputs nor the repository's `conf/`: each model file holds
    its resolved config and input settings.
    """
    from iad.ensembling.spec import ALL_FOLDS, make_spec, write_spec

    out_dir = Path(out_dir)
    members = []
    for member in predictor.members:
        member_dir = out_dir / BUNDLE_MEMBERS_DIR / member.name
        member_dir.mkdir(parents=True, exist_ok=True)
        for stale in member_dir.glob(f"*{MODEL_FILE_SUFFIX}"):
            stale.unlink()
        for index, model in enumerate(member.models):
            export_model(model, member_dir / f"{fold_name(index)}{MODEL_FILE_SUFFIX}")
        # Written explicitly (not "as recorded") so the bundle says exactly what it runs.
        crop = member.center_crop if member.center_crop is not None else member.models[0].input_spec.val_center_crop
        members.append({"name": member.name, "path": f"{BUNDLE_MEMBERS_DIR}/{member.name}", "weight": member.weight,
                        "hflip_tta": member.hflip, "center_crop": crop, **asdict(member.cost),
                        "folds": ALL_FOLDS})  # only the folds it runs are exported
    detector = export_localizer(predictor.localizer, out_dir) if predictor.localizer is not None else None
    write_spec(make_spec(members, oof={}, aneurysm_detector=detector), out_dir / BUNDLE_FILE)
    return out_dir
