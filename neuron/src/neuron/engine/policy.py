"""What a load request from the network may ask an engine to read: sources and engine args.

A neuron token lets its holder start engines, and an engine reads whatever files its
command line names (``--chat-template`` is opened and then served back through
``/tokenize``; a failed ``--tokenizer`` prints what it found into the error a client sees).
So every value that names a file must resolve, symlinks followed, inside one of
``allowed_paths``; a ``source`` (or ``--tokenizer``) that is not such a path must be a hub
repo id matching one of ``allowed_sources``. Every item of ``engine_args`` is checked: a
flag must be on ``allowed_engine_args``, and an item that is not a flag must be the value
of the flag before it, which must be one known to take a value (:data:`VALUE_FLAGS`).
Default models from the operator's own file are not checked against these lists (the
operator could change them anyway); what reaches argv from any spec, theirs included, is
checked by :class:`neuron.settings.ModelSpec` (``model_id``, ``quant``, ``dtype`` and
``source`` cannot start with ``-``; no item has a control character).

Flags are checked as vLLM 0.32's parser reads them (``_`` is ``-``; ``-X.key`` writes into
the JSON option ``X``; ``--config`` is looked for anywhere). Only flags in the vetted
:data:`CATALOGUE` can be allowed, each with its kind: :data:`PATH_FLAGS` are checked like
paths, :data:`MODEL_FLAGS` like sources. :data:`NEVER_ALLOWED` cannot be put on the
allow-list at all, because their values carry file names inside JSON, YAML or ``name=path``
pairs, import or construct code, or set options the neuron itself owns.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from neuron.errors import BadRequest

Kind = Literal["switch", "value", "path", "model"]
"""How a flag is checked: a ``switch`` takes no value (a loose item after it would be vLLM's
positional ``model_tag``, which replaces the model); a ``value`` takes one, which may come as
the next item; a ``path`` names a file (checked against ``allowed_paths``); a ``model`` is a
hub repo id or a local directory, like ``source``."""

CATALOGUE: dict[str, Kind] = {
    # Switches (vLLM's BooleanOptionalAction also has the --no- form).
    "--enforce-eager": "switch",
    "--no-enforce-eager": "switch",
    "--enable-prefix-caching": "switch",
    "--no-enable-prefix-caching": "switch",
    "--enable-chunked-prefill": "switch",
    "--no-enable-chunked-prefill": "switch",
    "--enable-auto-tool-choice": "switch",
    "--trust-remote-code": "switch",  # off the default list: runs the repo's Python
    "--no-trust-remote-code": "switch",
    "--async-scheduling": "switch",
    "--disable-log-stats": "switch",
    "--enable-log-requests": "switch",
    "--disable-sliding-window": "switch",
    "--disable-cascade-attn": "switch",
    "--disable-custom-all-reduce": "switch",
    "--enable-expert-parallel": "switch",
    "--enable-lora": "switch",
    "--enable-prompt-tokens-details": "switch",
    "--enable-force-include-usage": "switch",
    "--return-tokens-as-token-ids": "switch",
    "--language-model-only": "switch",
    # One plain value each: numbers, names from a fixed set, revisions.
    "--max-num-seqs": "value",
    "--max-num-batched-tokens": "value",
    "--max-model-len": "value",
    "--kv-cache-dtype": "value",
    "--tool-call-parser": "value",  # a registered name (the plugin file is never allowed)
    "--reasoning-parser": "value",
    "--seed": "value",
    "--dtype": "value",
    "--quantization": "value",
    "--tensor-parallel-size": "value",
    "--pipeline-parallel-size": "value",
    "--data-parallel-size": "value",
    "--gpu-memory-utilization": "value",
    "--block-size": "value",
    "--cpu-offload-gb": "value",
    "--kv-cache-memory-bytes": "value",
    "--max-logprobs": "value",
    "--logprobs-mode": "value",
    "--revision": "value",
    "--code-revision": "value",
    "--tokenizer-mode": "value",
    "--tokenizer-revision": "value",
    "--load-format": "value",
    "--model-impl": "value",
    "--chat-template-content-format": "value",
    "--response-role": "value",
    "--scheduling-policy": "value",
    "--long-prefill-token-threshold": "value",
    "--max-log-len": "value",
    "--uvicorn-log-level": "value",
    "--max-loras": "value",
    "--max-lora-rank": "value",
    "--max-cpu-loras": "value",
    "--lora-dtype": "value",
    # Files, checked against allowed_paths.
    "--chat-template": "path",  # opened first, even when the value is meant as a template
    "--generation-config": "path",  # a folder with generation_config.json ("auto", "vllm")
    "--hf-config-path": "path",
    "--allowed-local-media-path": "path",  # lets requests read files under it
    "--ssl-keyfile": "path",
    "--ssl-certfile": "path",
    "--ssl-ca-certs": "path",
    "--mm-encoder-fp8-scale-path": "path",
    "--mm-encoder-fp8-scale-save-path": "path",  # written
    # Hub repo ids or local folders, checked like source.
    "--tokenizer": "model",
    "--spec-model": "model",
}
"""The vetted vLLM flags (0.32's names, each checked against its parser by the tests) an
``allowed_engine_args`` list may name, with how each is checked. A flag not here cannot be
allowed: the policy would not know whether it takes a value, nor what that value reaches."""

PATH_FLAGS = frozenset(f for f, kind in CATALOGUE.items() if kind == "path")
MODEL_FLAGS = frozenset(f for f, kind in CATALOGUE.items() if kind == "model")
VALUE_FLAGS = frozenset(f for f, kind in CATALOGUE.items() if kind != "switch")
"""Flags that take one value, which may come as the next item."""
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
        "--headless",
        "--grpc",
        "--grpc-port",
        "--api-server-count",
        "-asc",
        # Values that carry file names inside JSON, YAML or name=path pairs.
        "--lora-modules",
        "--default-mm-loras",
        "--speculative-config",  # JSON whose "model" is a path
        "-sc",
        "--model-loader-extra-config",
        "--hf-overrides",
        "--logging-config",
        "--pooler-config",
        "--kv-transfer-config",
        "--ec-transfer-config",
        "--profiler-config",
        # Values that import, construct or fetch code, or write where they like.
        "--tool-parser-plugin",  # a Python file, imported
        "--reasoning-parser-plugin",  # a Python file, imported
        "--io-processor-plugin",
        "--log-config-file",  # logging.config.dictConfig: can construct any class
        "--middleware",  # a qualified name, imported and added to the app
        "--worker-cls",
        "--worker-extension-cls",
        "--scheduler-cls",
        "--logits-processors",  # qualified names, imported
        "--model-class-overrides",
        "--distributed-executor-backend",  # or a qualified class name
        "--hf-token",  # which hub credential the engine uses
        "-O",  # parse_args rewrites -O<x>; -O.key sets compilation-config keys
        "--compilation-config",  # debug_dump_path, custom ops, passes
        "-cc",
        "--attention-config",
        "-ac",
        "--kernel-config",
        "--additional-config",
        "--quantization-config",
        "--structured-outputs-config",
        "--reasoning-config",
        "--kv-events-config",  # publishes to an endpoint it names
        "--ec-manager-config",
        "--weight-transfer-config",
        "--fault-tolerance-config",
        "--eplb-config",
        "--diffusion-config",
        "-dc",
        "--engram-config",
        "--aux-output-config",
        "--watermark-config",
        "--tool-server",  # addresses the engine would call
        "--otlp-traces-endpoint",
    }
)
KNOWN = frozenset(CATALOGUE) | NEVER_ALLOWED
NUMBER = re.compile(r"^-\d+$")
"""The only separate items that may start with ``-``: anything else that does is a flag to
vLLM, and ``-1.5`` (a ``-`` and a ``.``) a key of a JSON option that swallows the next
item; a negative decimal is written ``--flag=-1.5``, where it is plainly the flag's value."""
DECIMAL = re.compile(r"^-\d*\.\d+$")

SECRET_NAMES = frozenset({"token", "stored_tokens"})
"""Where ``huggingface-cli login`` keeps hub tokens, at the top of the Hugging Face cache,
which is an allowed path by default: a ``--chat-template`` naming it would serve the token."""
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
"""``owner/name`` or ``name``: what the hub accepts, no ``..``, no leading ``/``, ``.``, ``-``."""
INLINE_TEMPLATE = ("{", "}", "\n")
"""vLLM takes a ``--chat-template`` value with one of these as the template itself."""


def normal(flag: str) -> str:
    """A flag as vLLM reads it: ``_`` and ``-`` are the same in its names."""
    return flag.replace("_", "-")


def check_flag_names(allowed: Iterable[str]) -> list[str]:
    """Why each entry of an ``allowed_engine_args`` list cannot be allowed (none: all can)."""
    problems = []
    for entry in allowed:
        flag = normal(entry)
        if flag in NEVER_ALLOWED:
            problems.append(
                f"{entry} can never be allowed: its value names files the neuron cannot check, "
                "imports or constructs code, or sets an option the neuron sets itself"
            )
        elif flag not in CATALOGUE:
            longer = sorted(f for f in KNOWN if f.startswith(flag))
            also = f" (an abbreviation of {', '.join(longer)})" if longer else ""
            problems.append(
                f"{entry} is not a vLLM flag this neuron knows{also}: only these can be "
                f"allowed: {sorted(CATALOGUE)}"
            )
    return problems


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
        self.flags = frozenset(normal(f) for f in allowed_engine_args) & frozenset(CATALOGUE)
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
        if not HUB_ID.fullmatch(source):
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
        """Every item is a flag on the allow-list or the value of the flag just before it.

        As vLLM's parser reads them: ``_`` in a flag is ``-``; an abbreviation is refused
        (argparse would take it for the flag it abbreviates); a flag with a ``.`` is refused
        (``-X.key value`` sets key of the JSON option X); a separate value may start with ``-``
        only if it is an integer (else vLLM takes it as a flag; ``-1.5`` as a dotted one);
        ``--config`` is refused wherever it stands (vLLM looks for it anywhere in argv).
        """
        if "--config" in args:
            raise BadRequest("engine_args may not contain --config", param="engine_args")
        expecting: str | None = None  # a flag that takes the next item as its value
        for item in args:
            if expecting is not None:
                if DECIMAL.fullmatch(item):
                    raise BadRequest(
                        f"engine_args: write {expecting}={item} as one item: vLLM reads a "
                        f"separate {item!r} as a flag with a '.' that takes the next item",
                        param="engine_args",
                    )
                if item.startswith("-") and not NUMBER.fullmatch(item):
                    raise BadRequest(
                        f"engine_args: {expecting} needs a value, not {item!r}; a value may "
                        "start with '-' only if it is a number",
                        param="engine_args",
                    )
                self._value(expecting, item)
                expecting = None
                continue
            if not item.startswith("-"):
                raise BadRequest(
                    f"engine_args item {item!r} is not a flag and follows no flag that takes "
                    "a value; write values as --flag=value",
                    param="engine_args",
                )
            name, eq, value = item.partition("=")
            if "." in name:
                raise BadRequest(
                    f"engine_args item {item!r}: vLLM reads a flag with '.' as a key of a "
                    "JSON option, which is never allowed",
                    param="engine_args",
                )
            flag = normal(name)
            if flag not in self.flags:
                allowed = sorted(self.flags)
                longer = sorted(f for f in KNOWN if f.startswith(flag) and f != flag)
                also = f" (an abbreviation of {', '.join(longer)})" if longer else ""
                raise BadRequest(
                    f"engine_args not allowed on this neuron: [{item!r}]{also}; allowed: {allowed}",
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
