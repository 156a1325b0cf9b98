"""What each peer's Dice computes: the installed peer libraries' Dice losses audited by
``dice_impls.audit`` (``--quick``: no timing), stored in ``results/audit/peers.json``.

    python -m analysis.peer_audits [--out results/audit/peers.json]     (make audit-peers)

``load_peer_audits(path)`` reads the file back as a table, one row per peer, for the report.
A peer library that is not installed is listed under ``skipped`` with the reason. Between runs
only ``max_abs_diff`` and ``max_grad_diff`` may move (in their last digits: float32 rounding of
the peer's own arithmetic, which depends on the torch build and CPU).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
from pathlib import Path
from typing import List, Optional

import pandas as pd

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "results" / "audit" / "peers.json"
SOFTMAX = "softmax over channels"  # stands for functools.partial(torch.softmax, dim=1) in kwargs

# (name, "module:attribute", kwargs (JSON), channels)
PEERS = [
    ("MONAI DiceLoss (defaults)", "monai.losses:DiceLoss", {}, 3),
    ("MONAI DiceLoss softmax", "monai.losses:DiceLoss", {"softmax": True, "to_onehot_y": True}, 3),
    ("MONAI DiceLoss softmax, no background", "monai.losses:DiceLoss",
     {"softmax": True, "to_onehot_y": True, "include_background": False}, 3),
    ("MONAI DiceLoss softmax, batch", "monai.losses:DiceLoss", {"softmax": True, "to_onehot_y": True, "batch": True}, 3),
    ("MONAI DiceLoss softmax, squared_pred", "monai.losses:DiceLoss",
     {"softmax": True, "to_onehot_y": True, "squared_pred": True}, 3),
    ("MONAI DiceLoss softmax, jaccard", "monai.losses:DiceLoss", {"softmax": True, "to_onehot_y": True, "jaccard": True}, 3),
    ("MONAI DiceLoss softmax, ignore_index 255", "monai.losses:DiceLoss",
     {"softmax": True, "to_onehot_y": True, "ignore_index": 255}, 3),
    ("MONAI DiceLoss sigmoid, binary", "monai.losses:DiceLoss", {"sigmoid": True}, 1),
    ("MONAI GeneralizedDiceLoss softmax", "monai.losses:GeneralizedDiceLoss", {"softmax": True, "to_onehot_y": True}, 3),
    ("MONAI GeneralizedDiceLoss softmax, w_type simple, batch", "monai.losses:GeneralizedDiceLoss",
     {"softmax": True, "to_onehot_y": True, "w_type": "simple", "batch": True}, 3),
    ("MONAI TverskyLoss softmax", "monai.losses:TverskyLoss", {"softmax": True, "to_onehot_y": True}, 3),
    ("MONAI TverskyLoss softmax, alpha 0.3, beta 0.7", "monai.losses:TverskyLoss",
     {"softmax": True, "to_onehot_y": True, "alpha": 0.3, "beta": 0.7}, 3),
    ("kornia dice_loss", "kornia.losses:dice_loss", {}, 3),
    ("kornia dice_loss macro", "kornia.losses:dice_loss", {"average": "macro"}, 3),
    ("nnU-Net MemoryEfficientSoftDiceLoss (trainer: batch dice, no background)",
     "nnunetv2.training.loss.dice:MemoryEfficientSoftDiceLoss",
     {"apply_nonlin": SOFTMAX, "batch_dice": True, "do_bg": False, "smooth": 1e-5, "ddp": False}, 3),
    ("nnU-Net MemoryEfficientSoftDiceLoss (per image, background)",
     "nnunetv2.training.loss.dice:MemoryEfficientSoftDiceLoss",
     {"apply_nonlin": SOFTMAX, "batch_dice": False, "do_bg": True, "smooth": 1e-5, "ddp": False}, 3),
    ("segmentation_models_pytorch DiceLoss multiclass", "segmentation_models_pytorch.losses:DiceLoss",
     {"mode": "multiclass"}, 3),
]
# Peers with Dice code but no loss to audit, and why.
LEFT_OUT = {
    "torchmetrics": "its Dice functions (dice_score, generalized_dice_score) are metrics: their result carries no "
                    "gradient (requires_grad=False even for probability inputs), so there is no loss to audit",
}


def resolve(target: str):
    module, _, name = target.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def materialize(kwargs: dict) -> dict:
    import torch

    return {k: functools.partial(torch.softmax, dim=1) if v == SOFTMAX else v for k, v in kwargs.items()}


def audit_peers(peers=PEERS) -> dict:
    """Every installed peer audited (quick); uninstalled ones and LEFT_OUT under ``skipped``."""
    from dice_impls import audit

    records, skipped = [], [{"name": name, "reason": reason} for name, reason in LEFT_OUT.items()]
    for name, target, kwargs, channels in peers:
        try:
            fn = resolve(target)
        except ImportError as error:
            skipped.append({"name": name, "reason": f"not installed ({error})"})
            continue
        report = audit(fn, channels, kwargs=materialize(kwargs), quick=True, name=name)
        data = report.to_dict()
        data.pop("seconds")  # wall time: the one field that differs on every run
        records.append({"name": name, "target": target, "kwargs": kwargs, "channels": channels, "report": data})
    return {"peers": records, "skipped": skipped}


def write_peer_audits(path: Path = DEFAULT_PATH) -> dict:
    result = audit_peers()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def load_peer_audits(path: Path = DEFAULT_PATH) -> pd.DataFrame:
    """One row per audited peer: name, target, kwargs, channels, sentence, target_encoding,
    activation, reduction_unit, include_background, squared, smooth_nr, smooth_dr, spec_match,
    max_abs_diff, defects (comma-separated ids), exit_status."""
    data = json.loads(Path(path).read_text())
    rows = []
    for record in data["peers"]:
        report = record["report"]
        rows.append(dict(
            name=record["name"], target=record["target"], kwargs=json.dumps(record["kwargs"]),
            channels=record["channels"], sentence=report["sentence"] or report.get("error") or "",
            target_encoding=report["target_encoding"], activation=report["activation"],
            reduction_unit=report["reduction_unit"], include_background=report["include_background"],
            squared=report["squared"], smooth_nr=report["smooth_nr"], smooth_dr=report["smooth_dr"],
            spec_match=report["spec"] is not None, max_abs_diff=_number(report["max_abs_diff"]),
            defects=", ".join(d["id"] for d in report["defects"]), exit_status=report["exit_status"],
        ))
    return pd.DataFrame(rows)


def skipped_peers(path: Path = DEFAULT_PATH) -> List[dict]:
    """The peers not audited, with the reason (not installed, or no loss to audit)."""
    return json.loads(Path(path).read_text())["skipped"]


def _number(value) -> Optional[float]:
    return None if value is None else float(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Audit the installed peers' Dice losses into a JSON file.")
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args(argv)
    result = write_peer_audits(args.out)
    for record in result["peers"]:
        report = record["report"]
        print(f"{record['name']}: {report['sentence'] or report['error']} "
              f"[{', '.join(d['id'] for d in report['defects']) or 'no defect'}]")
    for skip in result["skipped"]:
        print(f"{skip['name']}: skipped, {skip['reason']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
