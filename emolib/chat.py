"""Prompt formatting and tokenisation with exactly one BOS token.

Models with a chat template get it; models without one (base models such as Gemma 3 270M)
get a documented plain format::

    System: {system}

    User: {user}

    Assistant: {assistant}

    Assistant:          <- only with add_generation_prompt

Every encoding starts with exactly one BOS token when the tokenizer has one, whether or not the
template already writes it, so that position 0 can always be excluded from means and norms.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["PLAIN_ROLES", "format_chat", "encode", "encode_chat"]

PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


def _check_messages(messages: Sequence[dict]) -> None:
    if not messages:
        raise ValueError("messages is empty")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise ValueError(f"message {i} must be a dict with exactly 'role' and 'content', got {m!r}")
        if m["role"] not in PLAIN_ROLES:
            raise ValueError(f"message {i} has role {m['role']!r}; expected one of {sorted(PLAIN_ROLES)}")


def format_chat(tokenizer, messages: Sequence[dict], *, add_generation_prompt: bool = True) -> str:
    """Render messages as text with the model's chat template, or the plain format without one."""
    _check_messages(messages)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    text = "".join(f"{PLAIN_ROLES[m['role']]}: {m['content'].strip()}\n\n" for m in messages)
    if add_generation_prompt:
        text += "Assistant:"
    return text


def encode(tokenizer, text: str, *, bos: bool = True) -> list[int]:
    """Token ids of ``text`` with one leading BOS (if the tokenizer has one and ``bos``)."""
    ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    bos_id = tokenizer.bos_token_id
    if bos and bos_id is not None and (not ids or ids[0] != bos_id):
        ids.insert(0, bos_id)
    if not bos and bos_id is not None and ids and ids[0] == bos_id:
        # The template wrote a BOS itself; the caller asked for none.
        ids = ids[1:]
    return ids


def encode_chat(tokenizer, messages: Sequence[dict], *, add_generation_prompt: bool = True) -> list[int]:
    return encode(tokenizer, format_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt))
