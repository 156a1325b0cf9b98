"""``dicebench audit TARGET``: what a Dice loss computes, which known defects it has, what it costs.

TARGET is ``package.module:name`` or ``path/to/file.py:name``; ``name`` (dotted names reach into
classes and modules) is a function ``f(logits, target)``, an ``nn.Module`` class (built with
``--kwargs``) or an instance. The engine is ``dice_impls.audit``; docs/audit.md describes every
probe. Exit status: 0 audited without defects, 1 defects found, 2 could not audit (one line on
stderr saying why).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

from .errors import UsageError

DESCRIPTION = "Audit any Dice loss: what it computes (its DiceSpec), its known defects, its cost."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="package.module:name or path/to/file.py:name (a function, an nn.Module class "
                                       "or an instance)")
    parser.add_argument("--channels", type=int, default=None,
                        help="number of classes (1: binary, one channel); default 3, or 1 or 2 when the loss takes no "
                             "3-channel input")
    parser.add_argument("--kwargs", default=None, help="JSON object of keyword arguments for the class or function")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON to this path")
    parser.add_argument("--quick", action="store_true", help="skip the cost measurement (timing)")
    parser.add_argument("--device", default="cpu", help="device of the probes (cpu, cuda, cuda:1); default cpu")
    parser.add_argument("--ignore-index", type=int, default=None,
                        help="the label the loss ignores, when its keywords, attributes or signature do not say")


def main(args: argparse.Namespace) -> int:
    import torch
    from dice_impls import audit

    if args.channels is not None and args.channels < 1:
        raise UsageError(f"--channels must be at least 1, got {args.channels}")
    kwargs = parse_kwargs(args.kwargs)
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise UsageError(f"--device {args.device!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available here")
    fn = load_target(args.target)
    report = audit(fn, args.channels, kwargs=kwargs, device=device, quick=args.quick, ignore_index=args.ignore_index,
                   name=args.target)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(report.to_json() + "\n")
    if report.error:
        print(f"dicebench audit: could not audit {args.target}: {report.error}", file=sys.stderr)
    else:
        print(report)
    return report.exit_status


def parse_kwargs(text):
    if text is None:
        return None
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--kwargs is not valid JSON ({error}): {text!r}") from None
    if not isinstance(kwargs, dict):
        raise UsageError(f"--kwargs must be a JSON object, got {type(kwargs).__name__}: {text!r}")
    return kwargs


def load_target(text: str):
    """The object ``module:name`` or ``file.py:name`` names; a UsageError naming the problem."""
    location, sep, name = text.rpartition(":")
    if not sep or not location or not name:
        raise UsageError(f"TARGET must be package.module:name or path/to/file.py:name, got {text!r}")
    try:
        module = _load_file(Path(location)) if location.endswith(".py") or "/" in location else \
            importlib.import_module(location)
    except UsageError:
        raise
    except BaseException as error:  # the user's module may fail to import in any way (SystemExit included)
        raise UsageError(f"cannot import {location}: {type(error).__name__}: {_first_line(error)}") from None
    obj = module
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{location} has no {name!r}") from None
    return obj


def _load_file(path: Path):
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    module_name = f"dicebench_audit_target_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))  # the file's sibling modules import as they would beside it
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else "(no message)"
