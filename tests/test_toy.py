"""The toy checkpoint: its scenes, its training script, and what the shipped weights can do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from vltools.testing import original_key_shapes, toy_scenes
from vltools.toy import (
    COLOURS,
    KINDS,
    SHAPES,
    all_questions,
    box_attention,
    conversations,
    follow_ups,
    score,
    shape_mask,
    toy_config,
    toy_scene,
)
from vltools.toy_targets import inside_kinds, label_classes, tile_labels, token_cover
from vltools.toy_train import TrainConfig, edge_filters, run, sincos_positions

# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


def test_toy_scenes_yield_the_documented_dicts_and_the_same_scenes_for_the_same_seed():
    first = list(toy_scenes(12, seed=5))
    again = list(toy_scenes(12, seed=5))
    assert [set(s) for s in first] == [{"image", "question", "answer", "kind", "box"}] * 12
    for a, b in zip(first, again, strict=True):
        assert (a["question"], a["answer"], a["kind"], a["box"]) == (
            b["question"],
            b["answer"],
            b["kind"],
            b["box"],
        )
        assert a["image"].tobytes() == b["image"].tobytes()
    other = list(toy_scenes(12, seed=6))
    assert [s["question"] for s in other] != [s["question"] for s in first]


def test_every_answer_matches_what_was_drawn():
    for seed in range(80):
        scene = toy_scene(seed)
        drawn = {shape: (colour, box) for colour, shape, box in scene.shapes}
        assert scene.kind in KINDS
        if scene.kind == "colour":
            shape = scene.question.removeprefix("What colour is the ").removesuffix("?")
            assert drawn[shape][0] == scene.answer and drawn[shape][1] == scene.box
        elif scene.kind == "shape":
            assert scene.answer in SHAPES
            assert drawn[scene.answer][0] in scene.question
        elif scene.kind == "count":
            assert scene.answer == str(len(scene.shapes)) and scene.box is None
        elif scene.kind == "presence":
            article, *words = scene.question.removeprefix("Is there ").removesuffix("?").split()
            assert article == ("an" if words[0] == "orange" else "a"), scene.question
            present = (words[0], words[1]) in {(c, s) for c, s, _ in scene.shapes}
            assert scene.answer == ("yes" if present else "no")
            assert (scene.box is not None) == present
        else:
            assert scene.answer in ("left", "right", "above", "below")
            left, top, right, bottom = scene.box
            others = [b for _, _, b in scene.shapes if b != scene.box]
            centre = ((left + right) / 2, (top + bottom) / 2)
            if scene.answer == "left":
                assert any(centre[0] < (b[0] + b[2]) / 2 for b in others)


def test_boxes_lie_inside_the_image_and_shapes_are_distinct_within_a_scene():
    for seed in range(40):
        for style in ("mixed", "wide_small"):
            scene = toy_scene(seed, style=style)
            colours = [c for c, _, _ in scene.shapes]
            shapes = [s for _, s, _ in scene.shapes]
            assert len(set(colours)) == len(colours) and len(set(shapes)) == len(shapes)
            assert set(colours) <= set(COLOURS) and 1 <= len(scene.shapes) <= 4
            for _, _, (left, top, right, bottom) in scene.shapes:
                assert 0 <= left < right <= scene.image.width
                assert 0 <= top < bottom <= scene.image.height


def test_wide_small_scenes_are_panoramas_whose_shapes_are_a_few_percent_of_the_width():
    for scene in toy_scenes(10, seed=3, style="wide_small"):
        width, height = scene["image"].size
        assert width / height >= 3.5
        left, _, right, _ = scene["box"] or (0, 0, 62, 0)
        assert (right - left) / width < 0.04


def test_count_draws_that_many_shapes_and_one_shape_never_gets_a_position_question():
    for seed in range(30):
        assert len(toy_scene(seed, count=1).shapes) == 1
        assert toy_scene(seed, count=1).kind != "position"
        assert len(toy_scene(seed, count=2, kinds=("position",)).shapes) == 2
        assert 3 <= len(toy_scene(seed, count=4).shapes) <= 4  # fewer only when crowded
    four = [len(toy_scene(seed, count=4).shapes) for seed in range(30)]
    assert sum(n == 4 for n in four) >= 25
    for bad in (0, 5, 2.0, "2"):
        with pytest.raises(ValueError, match="count"):
            toy_scene(0, count=bad)
    with pytest.raises(ValueError, match="position"):
        toy_scene(0, count=1, kinds=("position",))


def test_bad_scene_arguments_are_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="mixed"):
        toy_scene(0, style="tall")
    with pytest.raises(ValueError, match="colour"):
        toy_scene(0, kinds=("size",))
    with pytest.raises(ValueError, match="non-negative"):
        list(toy_scenes(-1, seed=0))


def test_follow_up_questions_never_name_a_shape_another_question_names():
    for seed in range(60):
        scene = toy_scene(seed)
        more = follow_ups(scene, seed=seed, n=6)
        drawn = {c: s for c, s, _ in scene.shapes} | {s: c for c, s, _ in scene.shapes}
        asked = {c for c, _, b in scene.shapes if b == scene.box} if scene.box else set()
        named = []
        for question, answer, kind in more:
            if kind == "presence":
                assert answer == "no"
                assert question.startswith(
                    "Is there an " if " orange " in question else "Is there a "
                )
                continue
            words = set(question.rstrip("?").split())
            (name,) = words & (set(SHAPES) | set(COLOURS))
            assert drawn[name] == answer  # the follow-up's answer is what was drawn
            colour = name if name in COLOURS else answer
            named.append(colour)
        assert len(named) == len(set(named))  # each shape at most once
        if scene.kind in ("colour", "shape", "presence"):
            assert not asked & set(named)  # never the shape the first question is about


def test_all_questions_ask_every_shape_both_ways_and_every_answer_is_what_was_drawn():
    for seed in range(60):
        scene = toy_scene(seed)
        asked = all_questions(scene, seed=seed)
        assert all_questions(scene, seed=seed) == asked  # a function of the seed
        kinds = [kind for _, _, kind in asked]
        assert kinds.count("colour") == kinds.count("shape") == len(scene.shapes)
        assert kinds.count("count") == 1 and kinds.count("presence") == 2
        assert kinds.count("position") <= 2 and len(set(asked)) == len(asked)
        drawn = {(c, s) for c, s, _ in scene.shapes}
        for question, answer, kind in asked:
            words = set(question.rstrip("?").split())
            if kind == "colour":
                (shape,) = words & set(SHAPES)
                assert (answer, shape) in drawn
            elif kind == "shape":
                (colour,) = words & set(COLOURS)
                assert (colour, answer) in drawn
            elif kind == "count":
                assert answer == str(len(scene.shapes))
            elif kind == "presence":
                (colour,), (shape,) = words & set(COLOURS), words & set(SHAPES)
                assert answer == ("yes" if (colour, shape) in drawn else "no")
            else:  # the relation of the two named shapes' boxes
                boxes = {(c, s): b for c, s, b in scene.shapes}
                said = question.rstrip("?").split()
                a, b = [(w, said[i + 1]) for i, w in enumerate(said) if w in COLOURS]
                (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a], boxes[b]
                expected = {
                    "left": ax1 <= bx0,
                    "right": bx1 <= ax0,
                    "above": ay1 <= by0,
                    "below": by1 <= ay0,
                }
                assert expected[answer]


def test_conversations_hold_every_question_once_and_never_give_an_answer_away():
    names = set(COLOURS) | set(SHAPES)
    for seed in range(60):
        asked = all_questions(toy_scene(seed), seed=seed)
        groups = conversations(asked, seed=seed, turns=3)
        assert sorted(q for g in groups for q in g) == sorted(asked)
        assert conversations(asked, seed=seed, turns=3) == groups
        for group in groups:
            assert 1 <= len(group) <= 3
            words = [set(f"{q} {a}".replace("?", " ").split()) & names for q, a, _ in group]
            for i, mine in enumerate(words):
                assert not any(mine & other for other in words[i + 1 :]), group
    assert all(len(g) == 1 for g in conversations(asked, seed=0, turns=1))
    with pytest.raises(ValueError, match="turns=0"):
        conversations(asked, seed=0, turns=0)


def test_sincos_positions_give_the_class_token_zeros_and_each_patch_its_own_code():
    code = sincos_positions(1 + 32 * 32, 32)  # [1, 1025, 32]
    assert tuple(code.shape) == (1, 1025, 32)
    assert float(code[0, 0].abs().sum()) == 0.0
    assert len({tuple(row.tolist()) for row in code[0, 1:]}) == 32 * 32
    with pytest.raises(ValueError, match="square"):
        sincos_positions(1000, 32)


def test_edge_filters_see_a_coloured_edge_in_its_direction_and_not_a_grey_texture():
    filters = edge_filters(14)  # [19, 3, 14, 14]: 3 channel means, then 8 directions x 2
    assert tuple(filters.shape) == (19, 3, 14, 14)

    def respond(patch: np.ndarray) -> np.ndarray:  # [14, 14, 3] -> each filter's response
        return np.einsum("ocyx,yxc->o", filters.numpy().astype(np.float64), patch)

    grey = np.full((14, 14, 3), 0.2)
    red_left = grey.copy()
    red_left[:, :7] = (1.0, -1.0, -1.0)  # a red shape's edge, upright: across it is 0 degrees
    red_top = red_left.transpose(1, 0, 2)  # the same edge lying down: 90 degrees
    stripes = np.repeat(np.sin(np.arange(14) / 2)[None, :, None], 14, 0) * np.ones(3)
    for patch, direction in ((red_left, 0), (red_top, 4)):
        opponent = np.abs(respond(patch)[3:]).reshape(8, 2).max(1)  # per direction
        assert (
            opponent.argmax() == direction
            and opponent[direction] > 5 * opponent[(direction + 4) % 8]
        )
    assert np.abs(respond(stripes)[3:]).max() < 1e-9  # grey: no colour-opponent response
    assert np.allclose(respond(grey)[:3], 0.2)  # the first three: each channel's mean
    with pytest.raises(ValueError, match="patch"):
        edge_filters(1)


def test_a_fresh_run_with_edge_filters_starts_its_patch_embedding_there(tmp_path):
    import torch

    from vltools.models import load_model
    from vltools.toy_train import _prepare, initial_checkpoint

    conv = {}
    for edges in (False, True):
        vlm = load_model(initial_checkpoint(tmp_path / str(edges)), device="cpu")
        _prepare(vlm.model, fresh=True, edges=edges)
        conv[edges] = vlm.model.model.vision_tower.embeddings.patch_embeddings.projection
    assert torch.equal(conv[True].weight[:19], edge_filters(14))
    assert not torch.equal(conv[False].weight[:19], edge_filters(14))
    assert torch.equal(conv[True].weight[19:], conv[False].weight[19:])  # the rest as drawn
    assert not conv[True].bias[:19].any()


# ---------------------------------------------------------------------------------------------
# Token targets
# ---------------------------------------------------------------------------------------------


def test_shape_mask_labels_exactly_the_pixels_drawn_in_each_shapes_colour():
    for seed in range(6):
        scene = toy_scene(seed)
        mask = np.asarray(shape_mask(scene))
        pixels = np.asarray(scene.image).astype(int)
        assert mask.shape == pixels.shape[:2] and set(np.unique(mask)) <= set(range(5))
        for label, (colour, _, (left, top, right, bottom)) in enumerate(scene.shapes, start=1):
            inside = mask == label
            assert inside.any()
            ys, xs = np.nonzero(inside)
            # inside the box, give or take a pixel (PIL draws an ellipse's right and bottom pixel
            # too) and, vertically, the 5% by which the star's points stretch its circle
            assert left - 1 <= xs.min() and xs.max() <= right + 1
            slack = 1 + 0.03 * (bottom - top)
            assert top - slack <= ys.min() and ys.max() <= bottom + slack
            # the colour jitter is at most 18 a channel
            assert np.abs(pixels[inside] - np.array(COLOURS[colour])).max() <= 18


@pytest.mark.parametrize("max_num", [1, 6, 12])
def test_tile_labels_follow_the_tiles_pixel_for_pixel_thumbnail_last(max_num):
    from vltools.images import load_image

    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for seed, style in [(1, "mixed"), (2, "mixed"), (3, "wide_small")]:
        scene = toy_scene(seed, style=style)
        tiled = load_image(scene.image, max_num=max_num)
        labels = tile_labels(scene, tiled.grid)
        assert labels.shape == (tiled.num_tiles, 448, 448)
        tiles = tiled.pixel_values.numpy().transpose(0, 2, 3, 1) * std + mean  # [T, S, S, 3]
        for label, (colour, _, _) in enumerate(scene.shapes, start=1):
            inside = labels == label
            if inside.sum() < 50:  # a small shape squashed to a sliver in a single tile
                continue
            # away from the edges (bicubic blends there), the tile shows the shape's colour
            core = inside & np.roll(inside, 3, 1) & np.roll(inside, -3, 1)
            core &= np.roll(inside, 3, 2) & np.roll(inside, -3, 2)
            seen = tiles[core] * 255
            assert np.median(np.abs(seen - np.array(COLOURS[colour])).max(-1)) < 25, (seed, label)
    with pytest.raises(ValueError, match="plan_tiles"):
        tile_labels(toy_scene(1), load_image(toy_scene(2).image, max_num=2).grid)


def test_token_cover_is_each_28_pixel_cells_share_of_every_label_row_major():
    labels = np.zeros((2, 56, 84), dtype=np.uint8)
    labels[0, :28, 28:56] = 1  # token (0, 1) of tile 0 wholly label 1
    labels[1, 28:42, :] = 2  # the top half of row 1 of tile 1 label 2
    cover = token_cover(labels, n_labels=3)
    assert cover.shape == (2, 6, 3)
    assert np.allclose(cover.sum(-1), 1.0)
    assert cover[0, 1, 1] == 1.0 and cover[0, [0, 2, 3, 4, 5], 1].sum() == 0
    assert np.allclose(cover[1, 3:, 2], 0.5) and cover[1, :3, 2].sum() == 0
    with pytest.raises(ValueError, match="28-pixel"):
        token_cover(np.zeros((1, 30, 28), np.uint8), n_labels=1)
    with pytest.raises(ValueError, match="n_labels"):
        token_cover(labels, n_labels=2)


def test_the_token_probe_scores_a_perfect_and_a_blind_feature_map_apart():
    import torch

    from vltools.toy_targets import TokenProbe

    scene = toy_scene(4)
    table = label_classes(scene)
    cover = np.zeros((1, 4, len(table)), np.float32)
    cover[0, :, 0] = 1.0
    cover[0, 1] = np.eye(len(table))[1]  # token 1 is all shape 1
    torch.manual_seed(0)
    probe = TokenProbe(8)
    features = torch.randn(1, 4, 8, requires_grad=True)
    result = probe(features, [cover], [table])
    assert result.total == 1 and result.correct in (0, 1) and np.isfinite(result.loss.item())
    result.loss.backward()
    assert features.grad is not None and float(features.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="tiles"):
        probe(features, [cover, cover], [table, table])


def test_the_mean_kind_head_reads_the_cover_weighted_mean_of_a_shapes_tokens():
    import torch

    from vltools.toy_targets import TokenProbe

    scene = toy_scene(4)
    table = label_classes(scene)
    cover = np.zeros((1, 4, len(table)), np.float32)
    cover[0, :, 0] = 1.0
    cover[0, 1:3] = 0.0
    cover[0, 1, [0, 1]] = (0.5, 0.5)  # half shape 1
    cover[0, 2, 1] = 1.0  # all shape 1
    cover[0, 3, [0, 1]] = (0.9, 0.1)  # below min_cover: not the shape's token
    torch.manual_seed(0)
    probe = TokenProbe(8, mean=True)
    features = torch.randn(1, 4, 8)
    result = probe(features, [cover], [table])
    mean = (0.5 * features[0, 1] + features[0, 2]) / 1.5
    want = torch.tensor([int(table[1, 1]) - 1])
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(probe.mean_kind(mean)[None], want)
    assert result.averaged == pytest.approx(float(expected), rel=1e-5)
    terms = result.colour + result.shape + result.pooled + result.averaged
    assert result.loss.item() == pytest.approx(terms, rel=1e-5)
    assert result.averaged_correct == int(probe.mean_kind(mean).detach().argmax() == want[0])
    plain = TokenProbe(8)
    assert plain.mean_kind is None and plain(features, [cover], [table]).averaged == 0.0


def test_crop_features_of_a_whole_tile_are_the_models_own_image_features(quick_run):
    import torch

    from vltools.images import load_image
    from vltools.models import load_model
    from vltools.toy_train import crop_features

    vlm = load_model(quick_run[0], device="cpu")
    pixels = load_image(toy_scene(5).image, max_num=2).pixel_values[:2]
    with torch.no_grad():
        whole = crop_features(vlm.model, pixels, [(0, 0), (0, 0)])
    assert torch.allclose(whole, vlm.image_features(pixels), atol=1e-5)
    # a crop sees fewer patches, so only the window's own position code carries over: a crop
    # at another place of the tile gives other features
    with torch.no_grad():
        here = crop_features(vlm.model, pixels[:1, :, :224, :224], [(0, 0)])
        there = crop_features(vlm.model, pixels[:1, :, :224, :224], [(16, 16)])
    assert here.shape == (1, 64, whole.shape[-1]) and not torch.allclose(here, there)


# ---------------------------------------------------------------------------------------------
# The training script
# ---------------------------------------------------------------------------------------------


def test_a_conversation_example_labels_exactly_each_answer_and_its_end_token(quick_run):
    from vltools.constants import IM_END
    from vltools.models import load_model
    from vltools.toy_train import encode_example

    vlm = load_model(quick_run[0], device="cpu")
    scene = toy_scene(3)
    more = [("What colour is the circle?", "red"), ("Is there a blue star?", "no")]
    row = encode_example(vlm, scene.as_dict(), max_num=1, more=more)
    ids, labels, pixels = row.input_ids, row.labels, row.pixel_values
    assert not row.packed and row.positions is None and "answer tokens" in repr(row)
    assert len(ids) == len(labels) and pixels.shape[0] == 1
    tok = vlm.tokenizer
    answers = [scene.answer, "red", "no"]
    wanted = [i for a in answers for i in tok(a + IM_END, add_special_tokens=False)["input_ids"]]
    assert [t for t in labels if t != -100] == wanted
    # the ids are the prompt chat renders for the last turn after the first two, plus the answer
    from vltools.prompts import chat_query

    history = [(f"<image>\n{scene.question}", scene.answer), more[0]]
    prompt = chat_query(
        more[1][0],
        history=history,
        num_patches_list=[1],
        system_message=vlm.system_message,
        tokens_per_tile=vlm.tokens_per_tile,
    ).text
    assert tok.decode(ids) == prompt + "no" + IM_END


def test_packed_branches_give_each_conversation_exactly_its_own_hidden_states(quick_run):
    """One row holds the image prefix once and every conversation after it; with the branch
    mask and positions each answer sees exactly the prompt chat builds for its conversation
    alone (a leak between branches, or a position off by one, changes the logits)."""
    import torch

    from vltools.images import load_image
    from vltools.models import load_model
    from vltools.toy_train import collate, encode_branches, encode_example

    vlm = load_model(quick_run[0], device="cpu")
    scene = toy_scene(3, count=3)
    tiled = load_image(scene.image, max_num=2)
    asked = [[(q, a) for q, a, _ in g] for g in conversations(all_questions(scene, seed=3), seed=3)]
    assert max(len(turns) for turns in asked) > 1  # some branches are conversations
    packed = encode_branches(vlm, tiled, asked)
    short = encode_branches(vlm, load_image(toy_scene(4).image, max_num=1), asked[:2])
    batch = collate([packed, short], pad_id=0)  # padding in row 2
    ids, labels = batch.input_ids, batch.labels
    assert batch.attention_mask.shape == (2, 1, ids.shape[1], ids.shape[1])
    assert batch.pixel_values.shape[0] == tiled.num_tiles + 1
    assert f"{len(asked)} branches" in repr(packed) and "packed branches" in repr(batch)
    with torch.no_grad():
        hidden = vlm.model.model(
            input_ids=ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            pixel_values=batch.pixel_values,
        ).last_hidden_state
    segments = torch.tensor(packed.segments)
    for branch, ((question, answer), *more) in enumerate(asked, start=1):
        alone = encode_example(
            vlm, {"question": question, "answer": answer}, max_num=2, more=more, tiled=tiled
        )
        one = collate([alone], pad_id=0)
        assert one.position_ids is None and one.attention_mask.shape == one.input_ids.shape
        with torch.no_grad():
            expected = vlm.model.model(
                input_ids=one.input_ids,
                attention_mask=one.attention_mask,
                pixel_values=one.pixel_values,
            ).last_hidden_state[0]
        keep = (segments == 0) | (segments == branch)
        assert ids[0, : len(segments)][keep].tolist() == one.input_ids[0].tolist()
        assert labels[0, : len(segments)][keep].tolist() == one.labels[0].tolist()
        assert torch.allclose(hidden[0, : len(segments)][keep], expected, atol=1e-4)
    with pytest.raises(ValueError, match="mix packed branches"):
        collate([packed, alone], pad_id=0)
    with pytest.raises(ValueError, match="at least one"):
        encode_branches(vlm, tiled, [])


def test_right_padded_conversations_need_no_mask_under_the_causal_one(quick_run):
    """The conversation steps leave the padding mask out (attention then takes its fused causal
    path): every token before a row's padding gets the hidden state it gets with the mask."""
    import torch

    from vltools.models import load_model
    from vltools.toy_train import collate, encode_example

    vlm = load_model(quick_run[0], device="cpu")
    more = [("Is there a red star?", "no")]
    rows = [
        encode_example(vlm, toy_scene(3).as_dict(), max_num=2, more=more),
        encode_example(vlm, toy_scene(4).as_dict(), max_num=1),
    ]
    batch = collate(rows, pad_id=0)
    sizes = [len(row.input_ids) for row in rows]
    assert sizes[1] < batch.input_ids.shape[1]  # the second row is padded
    with torch.no_grad():
        masked, bare = (
            vlm.model.model(
                input_ids=batch.input_ids, attention_mask=mask, pixel_values=batch.pixel_values
            ).last_hidden_state
            for mask in (batch.attention_mask, None)
        )
    for row, size in enumerate(sizes):
        assert torch.allclose(bare[row, :size], masked[row, :size], atol=1e-5)


@pytest.mark.parametrize("branches", [False, True])
def test_a_curriculum_is_parsed_and_its_phases_draw_the_scenes_they_name(quick_run, branches):
    from vltools.models import load_model
    from vltools.toy_train import _examples, format_curriculum, parse_curriculum

    vlm = load_model(quick_run[0], device="cpu")
    cfg = TrainConfig(
        curriculum=((1, 2, ("colour",)),),
        tiles_per_step=4,
        threads=1,
        branches=branches,
        answer_attention=0.0 if branches else TrainConfig.answer_attention,
    )
    examples = _examples(vlm, cfg, 0, 0).examples  # step 0: the phase
    for row in examples:
        text = vlm.tokenizer.decode(row.input_ids)
        assert row.pixel_values.shape[0] == 1  # one tile, as the single-tile steps
        assert row.packed == branches
        asked = text.count("?")
        assert asked >= 1 and text.count("What colour is the") == asked, text
        if branches:  # both shapes' colours, in branches after one image prefix
            assert asked == 2 and max(row.segments) >= 1 and text.count("<img>") == 1

    assert parse_curriculum("60:1:colour, 150:any:colour+shape") == (
        (60, 1, ("colour",)),
        (150, None, ("colour", "shape")),
    )
    assert parse_curriculum("") == ()
    for text in ("", "60:1:colour", "40:1:colour,220:1:shape,180:any:colour+shape"):
        assert format_curriculum(parse_curriculum(text)) == text
    for bad in ("60:1", "x:1:colour", "60:5:colour", "60:1:size", "60:1:"):
        with pytest.raises(ValueError, match="STEPS:COUNT:KINDS"):
            parse_curriculum(bad)


QUICK = TrainConfig(
    steps=2,
    tiles_per_step=1,
    warmup=1,
    max_nums=(1,),
    wide_share=0.0,
    follow_ups=2,
    threads=1,
    vision_steps=3,
    vision_pool=2,
    vision_crops=3,
    vision_max_nums=(2,),
    curriculum=((1, 1, ("colour",)),),
    probe_weight=0.5,
    mean_kind=True,
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder, losses, _ = run(QUICK, tmp_path_factory.mktemp("toy") / "ckpt", log=None)
    return folder, losses


def test_a_few_training_steps_write_a_checkpoint_in_the_original_format(quick_run):
    folder, losses = quick_run
    assert len(losses) == 2 and all(np.isfinite(losses))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "internvl_chat" and config["template"] == "Hermes-2"
    assert config == json.loads(json.dumps(toy_config()))
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    assert shapes == original_key_shapes(config)
    assert "vision_model.encoder.layers.0.attn.qkv.weight" in shapes


def test_training_is_deterministic_and_changes_the_weights(quick_run, tmp_path):
    from safetensors.torch import load_file

    from vltools.toy_train import initial_checkpoint

    folder, losses = quick_run
    again, losses_again, _ = run(QUICK, tmp_path / "again", log=None)
    assert losses_again == losses
    trained, repeat = (
        load_file(str(folder / "model.safetensors")),
        load_file(str(again / "model.safetensors")),
    )
    assert all((trained[k] == repeat[k]).all() for k in trained)
    init = initial_checkpoint(tmp_path / "init")
    start = load_file(str(init / "model.safetensors"))
    assert any(not (trained[k] == start[k]).all() for k in trained)


def test_the_written_checkpoint_loads_and_chats_through_the_normal_path(quick_run):
    from vltools.images import load_image
    from vltools.models import load_model

    folder, _ = quick_run
    vlm = load_model(folder, device="cpu")
    assert (vlm.tokens_per_tile, vlm.tile_size, vlm.template) == (256, 448, "Hermes-2")
    scene = next(toy_scenes(1, seed=9))
    tiled = load_image(scene["image"], max_num=2)
    reply = vlm.chat(tiled.pixel_values, scene["question"], {"max_new_tokens": 3})
    assert isinstance(reply, str)


def test_a_run_goes_on_from_a_checkpoint_as_it_is_and_on_new_scenes(quick_run, tmp_path):
    from safetensors.torch import load_file

    from vltools.toy import toy_checkpoint
    from vltools.toy_train import main

    folder = tmp_path / "start"
    shutil.copytree(quick_run[0], folder)
    (folder / "MODEL_CARD.md").write_text("describes these weights only")
    # no steps: the weights come back exactly (a fresh start would reset the vision position
    # embedding to the sine-cosine code), and the card of the old weights is not copied
    no_steps = ["--steps", "0", "--vision-steps", "0"]
    assert main(["--out", str(tmp_path / "same"), "--init", str(folder), *no_steps]) == 0
    before = load_file(str(folder / "model.safetensors"))
    after = load_file(str(tmp_path / "same" / "model.safetensors"))
    assert before.keys() == after.keys() and all((before[k] == after[k]).all() for k in before)
    assert not (tmp_path / "same" / "MODEL_CARD.md").exists()
    assert main(["--out", str(tmp_path / "toy"), "--init", "toy", *no_steps]) == 0
    shipped = load_file(str(toy_checkpoint() / "model.safetensors"))
    again = load_file(str(tmp_path / "toy" / "model.safetensors"))
    assert all((shipped[k] == again[k]).all() for k in shipped)

    lines: list[str] = []
    cfg = TrainConfig(
        steps=1,
        tiles_per_step=1,
        max_nums=(1,),
        threads=1,
        vision_steps=0,
        curriculum=(),
        freeze_vision=False,
        first_scene=1000,
    )
    run(cfg, tmp_path / "more", log=lines.append, init=folder)
    assert "scenes 1001 " in lines[-1], lines  # scene 1000 and on: not the first run's
    moved = load_file(str(tmp_path / "more" / "model.safetensors"))
    assert any(not (moved[k] == before[k]).all() for k in before if k.startswith("vision_model."))

    # --freeze-vision: the step trains the projector and the language model, not the tower
    args = ["--steps", "1", "--tiles", "1", "--threads", "1", "--vision-steps", "0"]
    args += ["--curriculum", "", "--first-scene", "1000", "--freeze-vision"]
    assert main(["--out", str(tmp_path / "frozen"), "--init", str(folder), *args]) == 0
    frozen = load_file(str(tmp_path / "frozen" / "model.safetensors"))
    changed = {k for k in before if not (frozen[k] == before[k]).all()}
    assert changed and not any(k.startswith("vision_model.") for k in changed), changed
    assert any(k.startswith("mlp1.") for k in changed) and any(
        k.startswith("language_model.") for k in changed
    )


def test_a_run_with_packed_branches_trains_on_every_question(tmp_path):
    from dataclasses import replace

    cfg = replace(
        QUICK, branches=True, turns=2, curriculum=(), probe_weight=0.0, answer_attention=0.0
    )
    lines: list[str] = []
    _, losses, _ = run(cfg, tmp_path / "out", log=lines.append)
    assert len(losses) == 2 and all(np.isfinite(losses))
    # the log counts the first token of every answer: a one-tile scene asks at least its
    # colour, its shape, the count and two presence questions
    first = next(line for line in lines if line.startswith("step 1/"))
    assert int(first.split("right ")[1].split("/")[1].split()[0]) >= 5, first


def test_asked_label_names_the_shape_a_colour_or_shape_question_is_about():
    from vltools.toy_targets import asked_label

    scene = toy_scene(7, count=3)
    for label, (colour, shape, _) in enumerate(scene.shapes, start=1):
        assert asked_label(scene, colour, "colour") == label
        assert asked_label(scene, shape, "shape") == label
    for kind in ("count", "position", "presence"):
        assert asked_label(scene, "3", kind) is None
    absent = next(c for c in COLOURS if c not in {c for c, _, _ in scene.shapes})
    with pytest.raises(ValueError, match=f"answered '{absent}' names 0 .*the answer the scene"):
        asked_label(scene, absent, "colour")


def test_inside_kinds_names_the_shape_covering_most_of_a_token_if_at_least_half():
    # labels: background, a star (kind 3), a circle (kind 0); one row per token
    classes = np.array([[0, 0], [2, 4], [5, 1]])
    cover = np.array(
        [
            [1.0, 0.0, 0.0],  # background
            [0.2, 0.8, 0.0],  # inside the star
            [0.1, 0.3, 0.6],  # mostly the circle
            [0.6, 0.4, 0.0],  # the star's edge: less than half
            [0.5, 0.0, 0.5],  # exactly half the circle
        ],
        dtype=np.float32,
    )
    assert inside_kinds(cover, classes).tolist() == [-1, 3, 0, -1, 0]
    assert inside_kinds(cover[None], classes).tolist() == [-1, 3, 0, -1, 0]  # [tiles, ...]
    assert inside_kinds(cover, classes, min_cover=0.7).tolist() == [-1, 3, -1, -1, -1]


def test_attention_target_looks_inside_the_shape_and_sums_to_one():
    from vltools.toy_targets import attention_target

    cover = np.zeros((2, 4, 3), dtype=np.float32)  # 2 tiles of 4 tokens, labels 0-2
    cover[..., 0] = 1
    cover[0, :3, 1] = (1.0, 0.6, 0.2)  # label 1: two tokens at least half covered
    cover[1, 3, 2] = 0.3  # label 2: only a sliver, in the second tile
    cover[..., 0] -= cover[..., 1:].sum(-1)
    inside = attention_target(cover, 1)
    assert inside.shape == (8,) and inside.dtype == np.float32
    np.testing.assert_allclose(inside, [1 / 1.6, 0.6 / 1.6, 0, 0, 0, 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(attention_target(cover, 2), [0] * 7 + [1])  # all it touches
    np.testing.assert_allclose(attention_target(cover, 1, min_cover=0.1).sum(), 1, rtol=1e-6)
    assert not attention_target(cover[:1], 2).any()  # not in the first tile: nowhere to look


@pytest.fixture(scope="module")
def one_step():
    """The shipped model and one conversation step's pictures, with what both extra losses
    need (the defaults turn both on): ``(vlm, drawn, batch)``."""
    from vltools.models import load_model
    from vltools.toy_train import _examples, collate

    vlm = load_model("toy", device="cpu")
    cfg = TrainConfig(tiles_per_step=4, max_nums=(1, 2), wide_share=0.0, threads=1)
    assert cfg.answer_attention and cfg.inside_shape
    drawn = _examples(vlm, cfg, 5, 100)
    return vlm, drawn, collate(drawn.examples, pad_id=vlm.tokenizer.pad_token_id or 0)


def test_the_answer_attention_loss_is_the_last_layers_own_attention_against_the_target(one_step):
    import torch

    from vltools.attention import eager_language_model
    from vltools.toy_targets import attention_target
    from vltools.toy_train import _answer_attention_loss, _LastQueries

    vlm, drawn, batch = one_step
    for example, labels in zip(drawn.examples, drawn.asked, strict=True):  # a label an answer
        tokens = np.asarray(example.labels)
        assert len(labels) == int(((tokens[:-1] == -100) & (tokens[1:] != -100)).sum())
    hook = _LastQueries(vlm.model.model.language_model.layers[-1].self_attn)
    try:
        with torch.no_grad(), eager_language_model(vlm):
            out = vlm.model.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                pixel_values=batch.pixel_values,
                output_attentions=True,
            )
        loss = _answer_attention_loss(hook, batch, drawn, vlm.image_token_id)
    finally:
        hook.handle.remove()
    weights = out.attentions[-1][:, 0]  # [B, L, L]: the last layer's first head
    starts = (batch.labels[:, :-1] == -100) & (batch.labels[:, 1:] != -100)
    terms = []
    for row, (cover, labels) in enumerate(zip(drawn.covers, drawn.asked, strict=True)):
        image = torch.nonzero(batch.input_ids[row] == vlm.image_token_id)[:, 0]
        for position, label in zip(starts[row].nonzero()[:, 0].tolist(), labels, strict=True):
            if label is None:
                continue
            target = torch.from_numpy(attention_target(cover, label))
            terms.append(-(target * weights[row, position, image].log()).sum())
    assert len(terms) >= 3  # colour and shape answers among the step's
    assert torch.allclose(loss, torch.stack(terms).mean(), rtol=1e-4, atol=1e-5)


def test_the_inside_shape_loss_reads_each_inside_tokens_shape_after_the_first_layer(one_step):
    import torch

    from vltools.toy_train import _inside_shape_loss

    vlm, drawn, batch = one_step
    torch.manual_seed(0)
    head = torch.nn.Linear(vlm.model.config.text_config.hidden_size, 4)
    with torch.no_grad():
        hidden = vlm.model.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            pixel_values=batch.pixel_values,
            output_hidden_states=True,
        ).hidden_states[1]  # the first layer's output
        loss = _inside_shape_loss(hidden, head, batch, drawn, vlm.image_token_id)
    # by hand: every image token a shape covers at least half of, and that shape's kind
    logits, kinds = [], []
    for row, (cover, table) in enumerate(zip(drawn.covers, drawn.classes, strict=True)):
        image = np.flatnonzero(batch.input_ids[row].numpy() == vlm.image_token_id)
        flat = cover.reshape(-1, cover.shape[-1])
        assert len(image) == len(flat)  # one cover row per image token, in order
        for token, shares in zip(image, flat, strict=True):
            label = 1 + int(np.argmax(shares[1:]))
            if shares[label] >= 0.5:
                logits.append(head(hidden[row, token]))
                kinds.append(int(table[label, 1]) - 1)
    assert len(set(kinds)) >= 2  # several shapes' tokens among the step's
    expected = torch.nn.functional.cross_entropy(torch.stack(logits), torch.tensor(kinds))
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6)


def test_a_vision_pool_gives_its_batches_again_every_other_pass_mirrored():
    import torch

    from vltools.toy_train import VISION_FIRST_SCENE, _crop_batch, _mirrored, _reused

    cfg = TrainConfig(vision_crops=2, vision_max_nums=(2,), wide_share=0.0)
    first = _crop_batch(cfg, 0, VISION_FIRST_SCENE)
    second = _crop_batch(cfg, 1, first.next_scene)
    steps = list(_reused(iter([first, second]), pool=2, steps=7))
    assert len(steps) == 7 and steps[0] is first and steps[1] is second
    for step, batch in enumerate(steps[2:], start=2):
        drawn = (first, second)[step % 2]
        want = _mirrored(drawn) if (step // 2) % 2 else drawn
        assert torch.equal(batch.pixels, want.pixels), step  # bit for bit, via uint8 codes
        assert batch.offsets == drawn.offsets and batch.classes is drawn.classes
        assert all(np.array_equal(a, b) for a, b in zip(batch.covers, want.covers, strict=True))
        assert batch.next_scene == second.next_scene  # the scenes drawn so far
    # mirrored: each crop's cover is the cover of its mirrored label window
    mirrored_first = _mirrored(first)
    assert torch.equal(mirrored_first.pixels, first.pixels.flip(-1))
    for mirrored, drawn in zip(mirrored_first.covers, first.covers, strict=True):  # [1, 64, L]
        assert np.array_equal(mirrored.reshape(8, 8, -1), drawn.reshape(8, 8, -1)[:, ::-1])
    # which is the cover of the mirrored labels: tokens are row-major 28-pixel cells
    labels = np.random.default_rng(0).integers(0, 3, (1, 224, 224))
    batch = first._replace(
        pixels=first.pixels[:1], offsets=[(0, 0)], covers=[token_cover(labels, n_labels=3)]
    )
    want = token_cover(np.ascontiguousarray(labels[:, :, ::-1]), n_labels=3)
    assert np.array_equal(_mirrored(batch).covers[0], want)
    assert _mirrored(mirrored_first).pixels.equal(first.pixels)
    # no pool: the batches as drawn, and nothing more
    assert list(_reused(iter([first]), pool=0, steps=5)) == [first]


def test_bad_continuations_are_refused_with_the_fix(tmp_path):
    for first in (-1, 1.5, 499_990):
        with pytest.raises(ValueError, match=r"first_scene=.*int >= 0 that leaves room"):
            TrainConfig(first_scene=first)
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder.*or 'toy'"):
        run(TrainConfig(steps=0, threads=1), tmp_path / "out", log=None, init=tmp_path)
    # a frozen random tower: the conversations could never learn to read the pictures
    with pytest.raises(ValueError, match=r"vision_steps=0 and no init.*--no-freeze-vision"):
        run(TrainConfig(steps=1, vision_steps=0, threads=1), tmp_path / "out", log=None)
    for pool in (-1, 2.5):
        with pytest.raises(ValueError, match=r"vision_pool=.*int >= 0"):
            TrainConfig(vision_pool=pool)
    for weight in (-1.0, "1", float("nan")):
        with pytest.raises(ValueError, match=r"answer_attention=.*a number >= 0"):
            TrainConfig(answer_attention=weight)
    for weight in (-0.5, None):
        with pytest.raises(ValueError, match=r"inside_shape=.*a number >= 0"):
            TrainConfig(inside_shape=weight)
    with pytest.raises(ValueError, match=r"answer_attention=1.0 with branches=True.*turn one"):
        TrainConfig(answer_attention=1.0, branches=True)
    with pytest.raises(ValueError, match="turns=0: a branch asks at least one question"):
        TrainConfig(branches=True, turns=0, answer_attention=0.0)
    assert not (tmp_path / "out").exists()
    from vltools.toy_train import main

    for argv in (
        ["--first-scene", "-5"],
        ["--vision-steps", "0", "--freeze-vision"],
        ["--branches", "--answer-attention", "0", "--turns", "0"],
        ["--branches"],  # the answer attention, on by default, knows plain conversations only
        ["--vision-pool", "-1"],
        ["--answer-attention", "-1"],
        ["--inside-shape", "-1"],
        ["--answer-attention", "1", "--branches"],
    ):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "out"), *argv])


# ---------------------------------------------------------------------------------------------
# The shipped weights
# ---------------------------------------------------------------------------------------------


# Lower bounds for the shipped weights on the held-out sets below (measured: see
# MODEL_CARD.md); a mapping bug (tile order, thumbnail, transposed grid) drops the attention
# ratio to about 1.
TARGET = 0.9  # the issue's, on colour and on shape; measured 199/203 and 182/197 below
ATTENTION_FLOOR = 5.0  # the issue's target; measured 17.7x on the 20 scenes below
TILING_GAIN = 0.4  # panoramas: up to 12 tiles against one (measured 37/40 against 4/40)


@pytest.fixture(scope="module")
def toy_model():
    from vltools.models import load_model

    return load_model("toy", device="cpu")


def test_load_model_toy_is_the_shipped_original_format_checkpoint_under_20_mb(toy_model):
    from vltools.toy import toy_checkpoint

    folder = toy_checkpoint()
    assert Path(toy_model.path) == folder
    assert (folder / "model.safetensors").stat().st_size <= 20 * 2**20
    assert (folder / "MODEL_CARD.md").is_file()
    assert toy_model.checkpoint_format == "internvl_chat"
    assert (toy_model.tokens_per_tile, toy_model.tile_size) == (256, 448)


@pytest.fixture(scope="module")
def colour_shape_score(toy_model):
    # 400 questions (about 200 of each kind) drawn after these weights were chosen
    scenes = list(toy_scenes(400, seed=1047, kinds=("colour", "shape")))
    return score(toy_model, scenes, max_num=6)


def test_the_shipped_toy_model_reaches_the_issues_90_percent_on_colour_and_shape(
    colour_shape_score,
):
    # chance: 1/6 for colour, 1/4 for shape
    assert colour_shape_score.accuracy["colour"] >= TARGET, colour_shape_score
    assert colour_shape_score.accuracy["shape"] >= TARGET, colour_shape_score


def test_tiling_matters_on_panoramas_with_small_shapes(toy_model):
    # one tile squashes a 4:1 to 6.5:1 panorama into a square, and its small shapes into
    # slivers; up to 12 tiles keep them legible (the issue's tiling comparison, model card)
    scenes = list(toy_scenes(40, seed=13, style="wide_small", kinds=("colour", "shape")))
    single = score(toy_model, scenes, max_num=1)
    tiled = score(toy_model, scenes, max_num=12)
    assert tiled.overall >= single.overall + TILING_GAIN, (single, tiled)


def test_the_answer_token_attends_inside_the_asked_shapes_box(toy_model):
    scenes = list(toy_scenes(20, seed=12, kinds=("colour",)))
    result = box_attention(toy_model, scenes, max_num=6)
    assert len(result.mass) == 20 and ((result.mass >= 0) & (result.mass <= 1 + 1e-6)).all()
    assert result.ratio >= ATTENTION_FLOOR, result


# ---------------------------------------------------------------------------------------------
# The notebooks' banner
# ---------------------------------------------------------------------------------------------


def test_the_setup_banner_says_what_the_toy_model_can_and_cannot_do():
    from vltools.notebook import TOY_NOTE, Setup

    env = Setup(model_name="toy", model=None)
    assert env.is_toy and not env.is_tiny and env.note == TOY_NOTE
    assert "synthetic" in TOY_NOTE and "meaningless" in TOY_NOTE
    assert Setup(model_name="tiny", model=None).note != TOY_NOTE
    assert Setup(model_name="OpenGVLab/InternVL2-1B", model=None).note is None
