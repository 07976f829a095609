"""PrefixCache: which positions a conversation's key/value cache holds, matched, cropped, extended.

No model: a two-layer transformers DynamicCache filled with random keys and values, as
generation would fill it.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from vltools.prefix_cache import PrefixCache, common_prefix, match_keys

IMAGE = 99  # the <IMG_CONTEXT> id in these tests
PER_TILE = 2  # image tokens per tile in these tests


@pytest.fixture
def text_config():
    return transformers.Qwen2Config(
        hidden_size=8, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
    )


def generate_into(kv, n: int) -> None:
    """Append ``n`` positions to every layer of ``kv``, as a forward pass would."""
    for layer in range(2):
        k = torch.randn(1, 1, n, 4)  # [batch, kv_heads, positions, head_dim]
        kv.update(k, torch.randn_like(k), layer)


def run_turn(cache: PrefixCache, keys: list[int], answer: list[int]) -> int:
    """One turn: prepare, prefill what is not cached, generate ``answer``; returns the reuse."""
    kv = cache.prepare(keys)
    reused = len(cache)
    generate_into(kv, len(keys) - reused + len(answer) - 1)  # the last answer id is not fed
    cache.extend(keys + answer)
    return reused


def test_image_tokens_become_the_uid_of_the_image_they_hold():
    ids = [1, IMAGE, IMAGE, IMAGE, IMAGE, IMAGE, IMAGE, 2]
    keys = match_keys(ids, [(7, 1), (8, 2)], image_token_id=IMAGE, tokens_per_tile=PER_TILE)
    assert keys == [1, -7, -7, -8, -8, -8, -8, 2]


def test_image_tokens_the_images_do_not_account_for_stay_ids():
    keys = match_keys([IMAGE, IMAGE, IMAGE], [(5, 1)], image_token_id=IMAGE, tokens_per_tile=2)
    assert keys == [-5, -5, IMAGE]


def test_the_common_prefix_stops_at_the_first_difference():
    assert common_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def test_an_empty_cache_matches_nothing_and_prepares_a_fresh_dynamic_cache(text_config):
    cache = PrefixCache(text_config)
    assert cache.match([1, 2, 3]) == 0
    kv = cache.prepare([1, 2, 3])
    assert isinstance(kv, transformers.DynamicCache) and len(cache) == 0


def test_a_follow_up_reuses_the_whole_previous_turn(text_config):
    cache = PrefixCache(text_config)
    first = [1, 2, 3, 4]
    assert run_turn(cache, first, [10, 11]) == 0
    assert cache.keys == (1, 2, 3, 4, 10) and cache.cache.get_seq_length() == 5
    follow_up = [*first, 10, 11, 12, 13]  # the answer's last token is prefilled this time
    assert cache.match(follow_up) == 5
    assert run_turn(cache, follow_up, [20]) == 5
    assert len(cache) == len(follow_up) == cache.cache.get_seq_length()


def test_the_same_prompt_again_leaves_one_position_to_prefill(text_config):
    cache = PrefixCache(text_config)
    run_turn(cache, [1, 2, 3], [10, 11])
    kv = cache.prepare([1, 2, 3])
    assert len(cache) == 2 and kv.get_seq_length() == 2


def test_an_edited_question_crops_back_to_where_the_prompts_differ(text_config):
    cache = PrefixCache(text_config)
    run_turn(cache, [1, 2, 3, 4, 5], [10, 11])
    cache.prepare([1, 2, 7, 8])
    assert cache.keys == (1, 2) and cache.cache.get_seq_length() == 2


def test_crop_cuts_keys_and_tensors_together_as_an_undo_does(text_config):
    cache = PrefixCache(text_config)
    run_turn(cache, [1, 2, 3, 4, 5], [10, 11])
    cache.crop(3)
    assert cache.keys == (1, 2, 3) and cache.cache.get_seq_length() == 3
    cache.crop(10)  # longer than what is held: nothing changes
    assert len(cache) == 3
    with pytest.raises(ValueError, match="crop"):
        cache.crop(-1)


def test_a_different_image_in_the_same_place_invalidates_from_its_first_token(text_config):
    cache = PrefixCache(text_config)
    ids = [1, IMAGE, IMAGE, 2]
    cat = match_keys(ids, [(1, 1)], image_token_id=IMAGE, tokens_per_tile=PER_TILE)
    dog = match_keys(ids, [(2, 1)], image_token_id=IMAGE, tokens_per_tile=PER_TILE)
    run_turn(cache, cat, [10])
    assert cache.match(dog) == 1  # the same ids, but not the same image
    cache.prepare(dog)
    assert cache.keys == (1,) and cache.cache.get_seq_length() == 1


def test_a_cache_holding_more_than_the_keys_account_for_is_dropped(text_config):
    cache = PrefixCache(text_config)
    kv = cache.prepare([1, 2])
    generate_into(kv, 5)
    cache.extend([1, 2, 3])
    assert cache.cache is None and len(cache) == 0


def test_clear_forgets_and_copy_is_independent(text_config):
    cache = PrefixCache(text_config)
    run_turn(cache, [1, 2, 3, 4], [10, 11])
    twin = cache.copy()
    cache.crop(1)
    assert twin.keys == (1, 2, 3, 4, 10) and twin.cache.get_seq_length() == 5
    twin.clear()
    assert twin.cache is None and len(twin) == 0 and len(cache) == 1
    assert repr(cache) == "PrefixCache(1 tokens, 0 image(s))"
