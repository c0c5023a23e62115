"""Prefix affinity: which engine most likely still holds the longest prefix of a prompt.

cortex keeps an approximate index per model: a prompt's text is cut into pieces (each message
of a chat, a short answer together with the message after it, a long part cut into
``chunk_chars`` slices), each piece hashed together with the
hash of everything before it, so the hash of piece *k* stands for the whole prefix up to *k*.
The index maps such a hash to the engines (neuron names) that recently served a prompt with
that prefix, most recent first. A request's deepest piece found in the index names the
engines most likely to hold its prefix in their KV cache. Cutting at message ends means the
next turn of a chat finds the whole previous turn; a long message is cut further so a shared
document or system prompt matches in part.

Approximate, and on purpose: the index knows what this cortex sent, not what the engine
kept (its cache evicts on its own); other replicas' traffic is not seen; hashes are of the
text, not the engine's tokens after its chat template. Memory is bounded by entry counts
(per model and in total, evicted least recently used); the text hashed per request by
``max_prompt_chars``. Python's ``hash`` is salted per process, which is fine for an index
that never leaves the process; the tie-break that replicas must agree on
(:func:`anchor_key`) uses a stable CRC instead.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from typing import Any

HELD_PER_ENTRY = 4
"""Engines remembered per prefix: more than that many engines serving the same prefix means
the prefix is common, and then load decides among them anyway."""

ASSISTANT = "assistant"
"""A short answer is no piece of its own: it is hashed with the message after it (the next
turn's question), so each turn of a chat costs one piece, not two. A conversation's previous
request ended at its question, so nothing that could match is lost."""

Piece = tuple[str, str]
"""``(tag, text)``: a message's role (or a field name) and its text."""

CHARS_PER_PIECE = 16
"""At most ``limit // CHARS_PER_PIECE`` messages (and content parts) are read, whatever
their size: a body of a million empty messages costs no more than a long prompt."""


def pieces(path: str, payload: dict[str, Any], most: int) -> tuple[list[Piece], int]:
    """The prompt text of a request body, in order, and how many pieces make its *anchor*.

    At most ``most`` messages or input items, and ``most`` parts of each, are read.

    The anchor is the start of a conversation that stays the same over its turns: every
    piece up to and including the first user message (the first piece of a plain prompt).
    Shapes that are not understood give no pieces (the request is routed by load alone).
    """
    out: list[Piece] = []
    anchor = 0
    if path == "/v1/chat/completions" or path == "/v1/messages":
        system = payload.get("system")  # Anthropic's messages API keeps it apart
        if system is not None:
            _add(out, "system", system, most)
        messages = payload.get("messages")
        if isinstance(messages, list):
            for message in messages[:most]:
                if not isinstance(message, dict):
                    break
                role = message.get("role")
                tag = role if isinstance(role, str) else "?"
                _add(out, tag, message.get("content"), most)
                if not anchor and tag == "user":
                    anchor = len(out)
    elif path == "/v1/completions":
        prompt = payload.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = prompt[0]  # a batch: routed by its first prompt
        if isinstance(prompt, str):
            out.append(("prompt", prompt))
            anchor = 1
    elif path == "/v1/responses":
        instructions = payload.get("instructions")
        if instructions is not None:
            _add(out, "system", instructions, most)
        given = payload.get("input")
        if isinstance(given, str):
            out.append(("user", given))
            anchor = len(out)
        elif isinstance(given, list):
            for item in given[:most]:
                if not isinstance(item, dict):
                    break
                role = item.get("role")
                tag = role if isinstance(role, str) else str(item.get("type"))
                _add(out, tag, item.get("content"), most)
                if not anchor and tag == "user":
                    anchor = len(out)
    return out, anchor or len(out)


def _add(out: list[Piece], tag: str, content: object, most: int) -> None:
    """Append ``content`` (a string, or a list of parts with ``text``) as one piece."""
    if isinstance(content, str):
        out.append((tag, content))
    elif isinstance(content, list):
        texts = []
        for part in content[:most]:
            if isinstance(part, dict):
                text = part.get("text")
                # An image or a tool call: its kind stands for it (approximate on purpose).
                texts.append(text if isinstance(text, str) else f"\x00{part.get('type')}")
            elif isinstance(part, str):
                texts.append(part)
        out.append((tag, "\x00".join(texts)))
    else:
        out.append((tag, ""))  # no content (an assistant's tool calls): still a turn


Prompt = tuple[list[int], list[int]]
"""A prompt's chained hashes, and for each the characters of the prompt it covers."""


def chain(parts: list[Piece], chunk: int, limit: int) -> Prompt:
    """The chained hashes of ``parts``: one per piece of at most ``chunk`` characters.

    Hashes stop once ``limit`` characters have been hashed, so a very long prompt costs
    at most ``limit`` characters' worth of work.
    """
    hashes: list[int] = []
    ends: list[int] = []
    append = hashes.append
    h = 0
    left = limit
    carry: str | None = None  # a short answer, hashed with the piece after it
    for tag, text in parts:
        size = len(text)
        if size <= chunk and size <= left:
            if carry is None:
                if tag == ASSISTANT:
                    carry = text
                else:
                    h = hash((h, tag, text))
                    append(h)
                    ends.append(limit - left + size)
            else:
                h = hash((h, ASSISTANT, carry, tag, text))
                append(h)
                ends.append(limit - left + size)
                carry = None
            left -= size
            if left <= 0:
                break
            continue
        if carry is not None:
            h = hash((h, ASSISTANT, carry))
            append(h)
            ends.append(limit - left)
            carry = None
        done = limit - left
        for start in range(0, min(size, left), chunk):
            h = hash((h, tag, text[start : start + min(chunk, left - start)]))
            append(h)
            ends.append(done + min(start + chunk, size, left))
        left -= size
        if left <= 0:
            break
    if carry is not None:
        h = hash((h, ASSISTANT, carry))
        append(h)
        ends.append(limit - max(left, 0))
    return hashes, ends


def prompt_hashes(path: str, payload: dict[str, Any], chunk: int, limit: int) -> Prompt:
    """``chain(pieces(path, payload, limit // CHARS_PER_PIECE + 1)[0], chunk, limit)``, in
    one pass for chat requests.

    Chat completions are nearly all of the traffic that has a prefix worth routing by, and
    this is their hot path: the messages are hashed where they lie, without building the
    list of pieces first (which cost as much as the hashing for a typical conversation).
    """
    messages = payload.get("messages")
    if path != "/v1/chat/completions" or not isinstance(messages, list):
        return chain(pieces(path, payload, limit // CHARS_PER_PIECE + 1)[0], chunk, limit)
    hashes: list[int] = []
    ends: list[int] = []
    most = limit // CHARS_PER_PIECE + 1
    h = 0
    done = 0  # characters hashed so far
    carry: str | None = None  # a short answer, hashed with the piece after it
    for message in messages[:most] if len(messages) > most else messages:
        try:  # a subscript is cheaper than .get(): a message without them goes below
            text = message["content"]
            tag = message["role"]
        except (KeyError, TypeError):
            if type(message) is not dict:
                break
            text = message.get("content")
            tag = message.get("role")
        if type(text) is not str or type(tag) is not str:
            if type(text) is not str:
                one: list[Piece] = []
                _add(one, "", text, most)
                text = one[0][1]
            if type(tag) is not str:
                tag = "?"
        size = len(text)
        done += size
        if size <= chunk and done <= limit:  # nearly every message: no copy
            if carry is None:
                if tag == ASSISTANT:
                    carry = text
                    continue
                h = hash((h, tag, text))
            else:
                h = hash((h, ASSISTANT, carry, tag, text))
                carry = None
            hashes.append(h)
            ends.append(done)
            continue
        done -= size
        if carry is not None:
            h = hash((h, ASSISTANT, carry))
            hashes.append(h)
            ends.append(done)
            carry = None
        if size > limit - done:
            text = text[: limit - done]  # (the last piece hashed)
            size = len(text)
        for start in range(0, size, chunk):
            piece = text[start : start + chunk]
            h = hash((h, tag, piece))
            hashes.append(h)
            ends.append(done + start + len(piece))
        done += size
        if done >= limit:
            break
    if carry is not None:
        h = hash((h, ASSISTANT, carry))
        hashes.append(h)
        ends.append(done)
    return hashes, ends


def anchor_key(parts: list[Piece], anchor: int, chunk: int) -> int:
    """A stable 32-bit key of a conversation's anchor: the same in every cortex replica.

    At most ``chunk`` characters of each of the first ``anchor`` pieces (at most 4) count.
    Lone surrogates (valid in JSON strings) are kept as they are.
    """
    key = 0
    for tag, text in parts[: min(anchor, 4)]:
        data = f"{tag}\x00{text[:chunk]}".encode("utf-8", "surrogatepass")
        key = zlib.crc32(data, key)
    return key


def rendezvous(key: int, name: str) -> int:
    """Highest-random-weight score of engine ``name`` for ``key`` (stable across processes)."""
    x = (zlib.crc32(name.encode(), key) * 0x9E3779B97F4A7C15 + key) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    return (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF


class PrefixIndex:
    """Chained prefix hash → engines that recently served that prefix, per model.

    At most ``per_model`` entries for one model and ``total`` for all, evicted least
    recently used (each model's own oldest entry; past ``total``, the oldest entries of
    the model used least recently). An entry is a hash key and a tuple of at most
    :data:`HELD_PER_ENTRY` names that are the neurons' configured names (shared strings).
    Everything runs on the event loop, so nothing is locked.
    """

    def __init__(self, per_model: int, total: int) -> None:
        self.per_model = per_model
        self.total = total
        self.size = 0
        self._models: OrderedDict[str, OrderedDict[int, tuple[str, ...]]] = OrderedDict()
        self._solo: dict[str, tuple[str]] = {}  # one shared ``(engine,)`` per engine name

    def __len__(self) -> int:
        return self.size

    def models(self) -> list[str]:
        """The models anything is known of."""
        return list(self._models)

    def entries(self, model: str) -> int:
        entries = self._models.get(model)
        return len(entries) if entries is not None else 0

    def lookup(
        self, model: str, hashes: list[int], ends: list[int] | None = None
    ) -> dict[str, int]:
        """Engine → how many leading pieces of ``hashes`` it is known to hold (none: absent);
        given ``ends`` (:func:`prompt_hashes`'), how many leading characters instead.

        An engine listed for piece *k* served a prompt with that whole prefix. The walk
        stops at the first unknown piece: a deeper one is behind it in every prompt that has
        it, and deep pieces are evicted before shallow ones (see :meth:`record`).
        """
        entries = self._models.get(model)
        held: dict[str, int] = {}
        if entries is None:
            return held
        get = entries.get
        depth = 0
        last: tuple[str, ...] = ()
        for h in hashes:
            found = get(h)
            if found is None:
                break
            if found is not last:  # a conversation's pieces mostly share one (see record)
                for engine in last:
                    held[engine] = ends[depth - 1] if ends else depth
                last = found
            depth += 1
        for engine in last:
            held[engine] = ends[depth - 1] if ends else depth
        return held

    def record(self, model: str, hashes: list[int], engine: str) -> None:
        """``engine`` served a prompt with these pieces: it now comes first for each of them.

        The pieces are refreshed deepest first, so a prompt's shallow pieces (shared by
        more prompts) are the last of them to be evicted.
        """
        if not hashes:
            return
        entries = self._models.get(model)
        if entries is None:
            entries = self._models[model] = OrderedDict()
        else:
            self._models.move_to_end(model)
        get = entries.get
        move = entries.move_to_end
        solo = self._solo.get(engine)
        if solo is None:
            solo = self._solo[engine] = (engine,)
        added = 0
        for h in reversed(hashes):
            held = get(h)
            if held is solo:  # the usual case: this engine alone, again
                move(h)
            elif held is None:
                entries[h] = solo
                added += 1
            else:
                if held[0] != engine:
                    others = tuple(e for e in held if e != engine)
                    entries[h] = (engine, *others[: HELD_PER_ENTRY - 1])
                move(h)
        self.size += added
        while len(entries) > self.per_model:
            entries.popitem(last=False)
            self.size -= 1
        while self.size > self.total:
            oldest_model, oldest = next(iter(self._models.items()))
            oldest.popitem(last=False)
            self.size -= 1
            if not oldest:
                del self._models[oldest_model]

    def forget(self, model: str, engine: str | None = None) -> None:
        """Drop what is known of ``engine``'s cache for ``model`` (all engines: None).

        For when ``model`` stops being ready there (unloaded, failed, the neuron down or
        restarted): its KV cache is gone. One pass over the model's entries (at most
        ``per_model``), on a change of the fleet, never per request.
        """
        entries = self._models.get(model)
        if entries is None:
            return
        if engine is not None:
            for h, held in list(entries.items()):
                if engine in held:
                    rest = tuple(e for e in held if e != engine)
                    if rest:
                        entries[h] = rest  # (keeps its place: a value set in place)
                    else:
                        del entries[h]
                        self.size -= 1
            if entries:
                return
        del self._models[model]
        self.size -= len(entries)
