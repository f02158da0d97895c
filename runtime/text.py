"""Tokenizer, chat template and streaming detokenizer, with `tokenizers` and jinja2 only."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from shadow_edge.errors import BundleError, GenerationError

logger = logging.getLogger(__name__)

CHAT_ROLES = ("system", "user", "assistant", "tool")


def _raise_template_error(message: str):
    raise GenerationError(f"chat template rejected the messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """Render chat messages with a bundle's Jinja template the way transformers does.

    transformers (5.25, `utils/chat_template_utils.py`) compiles chat templates in an
    immutable sandbox with `trim_blocks` and `lstrip_blocks`, a `raise_exception` helper,
    `strftime_now`, and the tokenizer's special tokens as variables. This class does the same.
    """

    def __init__(self, source: str, special_tokens: dict[str, Any]) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = lambda value, indent=None, **_: json.dumps(
            value, indent=indent, ensure_ascii=False
        )
        env.globals["raise_exception"] = _raise_template_error
        env.globals["strftime_now"] = _strftime_now
        self.template = env.from_string(source)
        self.variables = {
            "bos_token": special_tokens.get("bos_token") or "",
            "eos_token": special_tokens.get("eos_token") or "",
        }

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        validate_messages(messages)
        return self.template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **self.variables
        )


def validate_messages(messages: list[dict[str, str]]) -> None:
    if not isinstance(messages, list) or not messages:
        raise GenerationError("chat messages must be a non-empty list of {role, content} dicts")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise GenerationError(f"chat message {i} must be a dict with 'role' and 'content'")
        if message["role"] not in CHAT_ROLES:
            raise GenerationError(
                f"chat message {i} has unknown role {message['role']!r}; "
                f"use one of {', '.join(CHAT_ROLES)}"
            )
        if not isinstance(message["content"], str):
            raise GenerationError(f"chat message {i} content must be a string")


def check_text(text: str | bytes, what: str = "prompt") -> str:
    """Return `text` as str, rejecting bytes that are not valid UTF-8 and lone surrogates."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GenerationError(f"{what} is not valid UTF-8 ({exc})") from exc
    if not isinstance(text, str):
        raise GenerationError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise GenerationError(f"{what} is not valid UTF-8 ({exc.reason})") from exc
    return text


class TextCodec:
    """Encode prompts and decode generated tokens for one bundle."""

    def __init__(self, bundle_dir: Path, special_tokens: dict[str, Any], chat_template: str | None):
        path = bundle_dir / "tokenizer.json"
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on parse errors
            raise BundleError(f"{path}: cannot load tokenizer ({exc})") from exc
        self.special_tokens = special_tokens
        self.chat_template = ChatTemplate(chat_template, special_tokens) if chat_template else None

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        bos = self.special_tokens.get("bos_token_id")
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if self.chat_template is None:
            raise GenerationError("this bundle has no chat template; pass a plain prompt instead")
        # Chat templates write their own special tokens, so none are added here.
        return self.encode(self.chat_template.render(messages))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class StreamDecoder:
    """Turn a growing token list into text pieces without splitting multi-byte characters.

    Only the tokens after the last emitted boundary are decoded at each step, so the cost
    per token stays constant as the sequence grows.
    """

    def __init__(self, codec: TextCodec) -> None:
        self.codec = codec
        self.tokens: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, token: int) -> str:
        self.tokens.append(token)
        prefix = self.codec.decode(self.tokens[self.prefix_offset : self.read_offset])
        full = self.codec.decode(self.tokens[self.prefix_offset :])
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return ""  # an incomplete UTF-8 sequence or a token with no text of its own
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.tokens)
        return full[len(prefix) :]
