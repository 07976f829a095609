"""The key/value cache of a conversation, reused for the longest common prefix of tokens.

A :class:`~vltools.chat.Chat` re-renders and re-tokenizes the whole conversation every turn (the
model card's semantics). :class:`PrefixCache` remembers which tokens its transformers
``DynamicCache`` holds, one *key* per position (:func:`match_keys`): the token id, or ``-uid``
for an ``<IMG_CONTEXT>`` token of the image ``uid``, so that two prompts share a prefix only
where both the text and the images agree. Before a turn the cache is cropped to the prefix the
new prompt shares with it (:meth:`PrefixCache.prepare`), generation extends it, and
:meth:`PrefixCache.extend` records what it then holds. Cropping back (an undo) is
:meth:`PrefixCache.crop`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from vltools._optional import require

__all__ = ["PrefixCache", "match_keys", "common_prefix"]


def match_keys(
    ids: Sequence[int],
    images: Sequence[tuple[int, int]],
    *,
    image_token_id: int,
    tokens_per_tile: int,
) -> list[int]:
    """Token ids with each image token replaced by ``-uid`` of the image it holds.

    ``images`` are ``(uid, num_tiles)`` in prompt order (uids are positive); each image holds
    ``num_tiles * tokens_per_tile`` consecutive ``image_token_id`` positions. Image tokens
    beyond those the images account for are kept as ids.
    """
    owners = [uid for uid, tiles in images for _ in range(tiles * tokens_per_tile)]
    out, k = [], 0
    for t in ids:
        if t == image_token_id and k < len(owners):
            out.append(-owners[k])
            k += 1
        else:
            out.append(int(t))
    return out


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """A transformers ``DynamicCache`` and the key of every position it holds.

    ``PrefixCache(text_config)``: the language model's config, for a fresh ``DynamicCache``.
    ``len(cache)`` is the number of positions held; :attr:`keys` their keys.

    >>> cache = PrefixCache(model.config.get_text_config())
    >>> kv = cache.prepare(keys)          # cropped to what `keys` shares with the cache
    >>> ...generate(..., cache=kv)...     # prefills keys[len(cache):], then the answer
    >>> cache.extend(keys + answer_ids)   # what the cache now holds
    """

    def __init__(self, text_config: Any) -> None:
        self.text_config = text_config
        self.cache: Any = None  # the DynamicCache, or None when nothing is held
        self._keys: list[int] = []

    @property
    def keys(self) -> tuple[int, ...]:
        """The key of each cached position (token id, or ``-uid`` of an image token)."""
        return tuple(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        images = len({k for k in self._keys if k < 0})
        return f"PrefixCache({len(self)} tokens, {images} image(s))"

    def match(self, keys: Sequence[int]) -> int:
        """How many leading positions of ``keys`` the cache holds already (nothing changes)."""
        return common_prefix(self._keys, keys) if self.cache is not None else 0

    def prepare(self, keys: Sequence[int]) -> Any:
        """The ``DynamicCache`` to generate ``keys`` with, cropped to the prefix it shares
        with them (at least one position is left to prefill); a fresh one if none is held."""
        if self.cache is not None:
            self.crop(min(self.match(keys), len(keys) - 1))
        else:
            transformers = require("transformers", purpose="The key/value cache")
            self.cache = transformers.DynamicCache(config=self.text_config)
            self._keys = []
        return self.cache

    def crop(self, n: int) -> None:
        """Keep the first ``n`` positions (no-op when ``n`` is at least the length)."""
        if n < 0:
            raise ValueError(f"crop(n={n}); expected a number of positions >= 0.")
        if self.cache is None:
            return
        remove = len(self._keys) - n
        if remove > 0:
            self.cache.crop(-remove)
        self._keys = self._keys[:n]

    def extend(self, keys: Sequence[int]) -> None:
        """Record what the cache holds after generation: the first ``len`` of ``keys`` (the
        prompt's keys then the answer's ids). A cache holding more positions than ``keys``
        accounts for, or none, is dropped."""
        if self.cache is None:
            return
        held = self.cache.get_seq_length()
        self._keys = list(keys)[:held] if held <= len(keys) else []
        if not self._keys:
            self.cache = None

    def clear(self) -> None:
        """Forget every cached position (a half-written cache, a reset)."""
        self.cache, self._keys = None, []

    def copy(self) -> PrefixCache:
        """An independent copy (the key/value tensors copied too)."""
        other = PrefixCache(self.text_config)
        other.cache = copy.deepcopy(self.cache)
        other._keys = list(self._keys)
        return other
