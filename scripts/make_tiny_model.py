"""Create a tiny random-weight Llama model (plus BPE tokenizer) that vLLM can serve.

Usage: python scripts/make_tiny_model.py OUTPUT_DIR [--force]

The output is noise, but every serving path (chat, completions, Anthropic messages,
streaming) is real. Idempotent: a complete model (marker file present) is left alone
unless --force is given. The model is built in a temporary sibling directory and renamed
into place, so an interrupted run never leaves a half-written model behind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

MARKER = ".tiny-model-complete"
SEED = 1234
VOCAB_SIZE = 768
UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, "<|system|>", "<|user|>", "<|assistant|>"]
# Content may be a string or a list of OpenAI-style parts; roles: system, user, assistant.
# '~' (not '+') so it also renders without bos/eos defined: vLLM's /v1/messages probes the
# template that way to decide whether system messages may appear after the first turn.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- set content = message['content'] -%}"
    "{%- if content is none -%}{%- set content = '' -%}"
    "{%- elif content is not string -%}"
    "{%- set content = content | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') -%}"
    "{%- endif -%}"
    "{{- '<|' ~ message['role'] ~ '|>\\n' ~ content ~ eos_token ~ '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)
CORPUS = """\
The quick brown fox jumps over the lazy dog. A tiny model answers every question with noise.
Hello, how are you today? I am fine, thank you. What is the weather like in the city?
Once upon a time there was a small language model that lived on a CPU with two cores.
It read tokens, one after another, and wrote new tokens back to the people who asked.
The server streams each token as soon as it is ready; the client may stop reading at any time.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 512 1024 2048. Symbols: ( ) [ ] { } < > + - * / = _
def main() -> int:\n    return 0\nif __name__ == "__main__":\n    raise SystemExit(main())
You are a helpful assistant. Please summarize the following text in one sentence.
"""


def build(out: Path, layers: int) -> str:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(SEED)
    bpe = Tokenizer(models.BPE(unk_token=UNK))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([line for _ in range(4) for line in CORPUS.splitlines()], trainer)
    bos_id, eos_id, pad_id = (bpe.token_to_id(t) for t in (BOS, EOS, PAD))
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    tok.save_pretrained(out)
    # Template in both places, and a class name that transformers 4.x and 5.x both resolve.
    tok_cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text(encoding="utf-8"))
    tok_cfg.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=CHAT_TEMPLATE)
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2) + "\n", encoding="utf-8")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=8192,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    # No max_new_tokens here: vLLM would adopt it as the default max_tokens.
    gen = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    gen.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    return f"{layers} layers, vocab {len(tok)}, {params} params"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("output_dir", type=Path, help="directory to create the model in")
    parser.add_argument("--force", action="store_true", help="rebuild even if complete")
    parser.add_argument(
        "--layers",
        type=int,
        default=2,
        help="decoder layers (default 2; the e2e tests use 48 so that a 2-core machine decodes "
        "~80 tokens/s instead of ~700, slow enough for streams to be observed mid-flight)",
    )
    args = parser.parse_args(argv)
    out: Path = args.output_dir.resolve()
    marker = out / MARKER
    if (
        marker.is_file()
        and marker.read_text().startswith(f"{args.layers} layers,")
        and not args.force
    ):
        sys.stdout.write(f"tiny model already present at {out}\n")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        summary = build(tmp, args.layers)
        (tmp / MARKER).write_text(summary + "\n", encoding="utf-8")
        for path in tmp.iterdir():
            path.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.write(f"wrote tiny model to {out} ({summary})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
