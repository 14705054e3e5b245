"""`animegen evaluate`: the comparison itself is metrics/evaluation.py; here is what the command writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from animegen.metrics.evaluation import METRICS, evaluate

__all__ = ["METRICS", "evaluate", "format_result", "write_json"]


def write_json(result: dict[str, Any], path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


def format_result(result: dict[str, Any]) -> str:
    parts = [f"n_fake={result['n_fake']:,}", f"n_real={result['n_real']:,}", f"{result['image_size']} px"]
    if "fid" in result:
        parts.append(f"FID {result['fid']:.2f}")
    if "kid" in result:
        spread = result.get("kid_std")
        kid = f"KID {result['kid'] * 1e3:.2f}e-3"
        parts.append(kid if spread is None else f"{kid} ± {spread * 1e3:.2f}e-3")
    if "swd" in result:
        parts.append(f"SWD {result['swd']:.2f} (x1e3)")
    if "fd_ssl" in result:
        parts.append(f"FD-SSL {result['fd_ssl']:.3f}")
    if "precision" in result:
        parts.append(f"precision {result['precision']:.3f} recall {result['recall']:.3f}")
    if "copy_share" in result:
        parts.append(
            f"copies {result['copy_share']:.1%} (held-out faces {result['copy_share_heldout']:.1%}: "
            f"share closer to a training face than {1 - result['copy_quantile']:.0%} of held-out faces are)"
        )
    if "weights" in result:
        parts.append(f"weights {result['weights']}")
    return "  ".join(parts)
