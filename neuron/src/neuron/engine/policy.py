"""What a load request from the network may ask an engine to read: sources and engine args.

A neuron token lets its holder start engines, and an engine reads whatever files its
command line names (``--chat-template`` is opened and then served back through
``/tokenize``; a failed ``--tokenizer`` prints what it found into the error a client sees).
So every value that names a file must resolve, symlinks followed, inside one of
``allowed_paths``; a ``source`` (or ``--tokenizer``) that is not such a path must be a hub
repo id matching one of ``allowed_sources``. Every item of ``engine_args`` is checked: a
flag must be on ``allowed_engine_args``, and an item that is not a flag must be the value
of the flag before it, which must be one known to take a value (:data:`VALUE_FLAGS`).
Default models from the operator's own file are not checked (the operator could change
these lists anyway).

Flags that take a file, by vLLM's ``--help`` (0.11 to 0.32): :data:`PATH_FLAGS` are
checked like paths, :data:`MODEL_FLAGS` like sources; :data:`NEVER_ALLOWED` cannot be put on
the allow-list at all, because their values carry file names inside JSON, YAML or
``name=path`` pairs (or set options the neuron itself owns) and cannot be checked here.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from pathlib import Path

from neuron.errors import BadRequest

PATH_FLAGS = frozenset(
    {
        "--chat-template",  # opened first, even when the value is meant as an inline template
        "--generation-config",  # a folder with generation_config.json ("auto", "vllm": words)
        "--hf-config-path",
        "--tool-parser-plugin",  # a Python file, imported
        "--reasoning-parser-plugin",  # a Python file, imported
        "--log-config-file",  # logging.config.dictConfig: can construct any class
        "--allowed-local-media-path",  # lets requests read files under it
        "--ssl-keyfile",
        "--ssl-certfile",
        "--ssl-ca-certs",
        "--mm-encoder-fp8-scale-path",
        "--mm-encoder-fp8-scale-save-path",  # written
    }
)
MODEL_FLAGS = frozenset({"--tokenizer", "--spec-model"})
"""Hub repo id or local directory, like ``source``."""
WORDS = {"--generation-config": frozenset({"auto", "vllm"})}
"""Values of a path flag that vLLM takes as keywords, not as file names."""
NEVER_ALLOWED = frozenset(
    {
        "--config",  # a YAML file of any flags: every check here would be bypassed
        "--model",  # the neuron passes source as --model (and a later one would win)
        "--served-model-name",
        "--host",
        "--port",
        "--uds",
        "--download-dir",  # [harness.vllm] hf_cache sets it
        "--api-key",
        "--lora-modules",  # name=path pairs or JSON
        "--default-mm-loras",  # JSON of paths
        "--speculative-config",  # JSON whose "model" is a path
        "-sc",
        "--model-loader-extra-config",
        "--hf-overrides",
        "--logging-config",
        "--pooler-config",
        "--kv-transfer-config",
        "--ec-transfer-config",
        "--profiler-config",
    }
)
VALUE_FLAGS = (
    PATH_FLAGS
    | MODEL_FLAGS
    | frozenset(
        {
            "--max-num-seqs",
            "--max-num-batched-tokens",
            "--kv-cache-dtype",
            "--tool-call-parser",
            "--reasoning-parser",
            "--seed",
            "--max-model-len",
            "--dtype",
            "--quantization",
            "--tensor-parallel-size",
            "--pipeline-parallel-size",
            "--gpu-memory-utilization",
            "--block-size",
            "--swap-space",
            "--cpu-offload-gb",
            "--max-logprobs",
            "--revision",
            "--tokenizer-mode",
            "--tokenizer-revision",
            "--load-format",
            "--chat-template-content-format",
            "--max-loras",
            "--max-lora-rank",
        }
    )
)
"""Flags known to take one value, which may come as the next item. Any other flag on the
allow-list is taken as a switch: a value for it must be written ``--flag=value``, because a
loose item after a switch would be vLLM's positional ``model_tag`` (which replaces the model)."""

SECRET_NAMES = frozenset({"token", "stored_tokens"})
"""Where ``huggingface-cli login`` keeps hub tokens, at the top of the Hugging Face cache,
which is an allowed path by default: a ``--chat-template`` naming it would serve the token."""
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
"""``owner/name`` or ``name``: what the hub accepts, no ``..``, no leading ``/``, ``.``, ``-``."""
INLINE_TEMPLATE = ("{", "}", "\n")
"""vLLM takes a ``--chat-template`` value with one of these as the template itself."""


def check_flag_names(allowed: Iterable[str]) -> list[str]:
    """The entries of an ``allowed_engine_args`` list that can never be allowed."""
    return sorted(set(allowed) & NEVER_ALLOWED)


class LaunchPolicy:
    """Checks a load request's ``source`` and ``engine_args``; raises :class:`BadRequest`.

    Plain values in, nothing out: no process is started and nothing is opened (only
    ``realpath`` and ``exists``, to see where a name leads).
    """

    def __init__(
        self,
        *,
        allowed_engine_args: Iterable[str],
        allowed_paths: Iterable[str],
        allowed_sources: Iterable[str],
    ) -> None:
        self.flags = frozenset(allowed_engine_args) - NEVER_ALLOWED
        self.roots = [Path(os.path.realpath(p)) for p in allowed_paths]
        self.sources = list(allowed_sources)

    def check(self, source: str, engine_args: list[str]) -> None:
        self.check_source(source, "source")
        self.check_engine_args(engine_args)

    def check_source(self, source: str, param: str) -> None:
        """``source`` is a directory inside ``allowed_paths`` or an allowed hub repo id."""
        # Anything that exists on disk is read from disk by vLLM, even "etc/ssl" (relative
        # to the engine's working directory): judged as a path, never as a hub id.
        if os.path.isabs(source) or source.startswith(".") or os.path.exists(source):
            self._inside(source, param)
            return
        if not HUB_ID.match(source):
            raise BadRequest(
                f"{param} {source!r} is neither a hub repo id (owner/name) nor an absolute path",
                param=param,
            )
        if not any(fnmatch.fnmatchcase(source, pattern) for pattern in self.sources):
            raise BadRequest(
                f"{param} {source!r} does not match this neuron's allowed_sources {self.sources}",
                param=param,
            )

    def check_engine_args(self, args: list[str]) -> None:
        """Every item is a flag on the allow-list or the value of the flag just before it."""
        expecting: str | None = None  # a flag that takes the next item as its value
        for item in args:
            if expecting is not None:
                self._value(expecting, item)
                expecting = None
                continue
            if not item.startswith("-"):
                raise BadRequest(
                    f"engine_args item {item!r} is not a flag and follows no flag that takes "
                    "a value; write values as --flag=value",
                    param="engine_args",
                )
            flag, eq, value = item.partition("=")
            if flag not in self.flags:
                allowed = sorted(self.flags)
                raise BadRequest(
                    f"engine_args not allowed on this neuron: [{item!r}]; allowed: {allowed}",
                    param="engine_args",
                )
            if eq:
                self._value(flag, value)
            elif flag in VALUE_FLAGS:
                expecting = flag
        if expecting is not None:
            raise BadRequest(f"engine_args: {expecting} needs a value", param="engine_args")

    def _value(self, flag: str, value: str) -> None:
        if flag in MODEL_FLAGS:
            self.check_source(value, f"engine_args {flag}")
        elif flag in PATH_FLAGS:
            if value in WORDS.get(flag, ()):
                return
            if flag == "--chat-template" and _inline(value):
                return
            self._inside(value, f"engine_args {flag}")

    def _inside(self, value: str, param: str) -> None:
        where = Path(os.path.realpath(value))
        which = "source" if param == "source" else "engine_args"
        roots = [root for root in self.roots if where.is_relative_to(root)]
        if not roots:
            raise BadRequest(
                f"{param}: {value!r} is outside this neuron's allowed_paths "
                f"{[str(r) for r in self.roots]}",
                param=which,
            )
        below = where.relative_to(max(roots, key=lambda r: len(r.parts))).parts
        hidden = [part for part in below if part.startswith(".") or part in SECRET_NAMES]
        if hidden:
            raise BadRequest(
                f"{param}: {value!r} leads to {hidden[0]!r}: hidden files and token files "
                "are never read for a load request",
                param=which,
            )


def _inline(value: str) -> bool:
    """A template written out in the value: vLLM still tries to open it, so it must not exist."""
    return any(c in value for c in INLINE_TEMPLATE) and not os.path.exists(value)
