"""A peft ShadowPEFT adapter with the demo adapter's sizes, for the benchmark's peft rows.

peft cannot load a shadow-peft checkpoint, and the two libraries' update networks differ
(peft's reads the block output without a norm), so the weights do not convert. For timing
that does not matter: what costs time is the shape of every matrix. This module builds a
peft adapter with the same shadow depth, feed-forward width, injection rank and update width,
with peft's own initialization, and caches it under `~/.cache/shadow-edge/adapters/`.
It is untrained: use it for speed and memory, never for accuracy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

from shadow_edge.checkpoint import Dialect, inspect_adapter
from shadow_edge.errors import ShadowEdgeError
from shadow_edge.paths import cache_dir, sha256_file

logger = logging.getLogger(__name__)


def peft_settings(shadow_peft_config: dict) -> dict:
    """Map a shadow-peft adapter config to peft `ShadowConfig` fields of the same sizes."""
    if shadow_peft_config.get("shadow_head_dim") or shadow_peft_config.get(
        "shadow_num_attention_heads"
    ):
        raise ShadowEdgeError(
            "this adapter sets its own shadow attention heads, which a peft timing adapter "
            "does not copy. Pass a peft adapter of the same sizes with --peft-adapter."
        )
    return {
        "task_type": "CAUSAL_LM",
        "r": shadow_peft_config["injection_hidden_size"],
        "update_hidden_size": shadow_peft_config["gate_hidden_size"],
        "shadow_alpha": shadow_peft_config["alpha"],
        "shadow_dropout": 0.0,
        "shadow_num_hidden_layers": shadow_peft_config["num_shadow_layers"],
        "shadow_intermediate_size": shadow_peft_config["shadow_intermediate_size"],
    }


def _cache_key(base_dir: Path, settings: dict) -> str:
    import peft

    payload = {
        "settings": settings,
        "base_config": json.loads((base_dir / "config.json").read_text()),
        "base_weights": [sha256_file(w) for w in sorted(base_dir.glob("*.safetensors"))],
        "peft": peft.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def obtain_peft_timing_adapter(base_dir: Path, shadow_peft_adapter: Path) -> Path:
    """Return the cached peft adapter sized like `shadow_peft_adapter`, building it once."""
    info = inspect_adapter(shadow_peft_adapter)
    if info.dialect is not Dialect.SHADOW_PEFT:
        raise ShadowEdgeError(
            f"{shadow_peft_adapter}: expected a shadow-peft adapter. A peft adapter needs no "
            "timing copy, so pass it to --adapter directly."
        )
    settings = peft_settings(info.settings)
    folder = cache_dir() / "adapters" / f"peft-timing-{_cache_key(base_dir, settings)}"
    if (folder / "adapter_config.json").is_file():
        return folder

    import torch
    from peft import ShadowConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    logger.info("building a peft timing adapter in %s", folder)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, ShadowConfig(**settings))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".peft-timing-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        (staging / "timing_only.json").write_text(
            json.dumps({"sized_like": str(shadow_peft_adapter), "settings": settings}, indent=2)
        )
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
