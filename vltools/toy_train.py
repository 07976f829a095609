"""Training the ``toy`` checkpoint on synthetic scenes: ``python -m vltools.toy_train``.

The whole chain goes through vltools' own InternVL2 path, nothing beside it: a random-weight
checkpoint in the ORIGINAL format is written by :func:`vltools.testing.write_checkpoint` for
:func:`vltools.toy.toy_config`, loaded by :func:`vltools.load_model` (converted to
transformers' native ``InternVLForConditionalGeneration``), fed the exact prompts ``chat``
builds (:func:`vltools.prompts.chat_query`, Hermes-2, ``<IMG_CONTEXT>`` x 256 per tile) with the
card's tiling (:func:`vltools.images.load_image`), trained on the answer tokens only, and
written back in the original format (original key names, the fused vision ``attn.qkv``)
through the loader's own key plan (:func:`vltools.models.plan_conversion`, run backwards).

Deterministic: the scenes are a function of their index, the tiling budget of each example
comes from a seeded generator, torch is seeded, and the run uses one thread by default.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vltools.constants import IM_END

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from vltools.models import VLModel

__all__ = [
    "TrainConfig",
    "initial_checkpoint",
    "encode_example",
    "train",
    "save_original",
    "run",
    "evaluate",
    "main",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """The recipe of a training run (every field is in the model card).

    ``steps`` optimiser steps of ``batch`` scenes each; scene ``i`` of the run is
    ``toy_scene(i)`` (style ``mixed``). Each step draws one tiling budget for its whole batch
    (similar tile counts, little padding) from ``max_nums``; with probability ``wide_share``
    the step is instead a batch of ``wide_small`` scenes cut with ``wide_max_num``.
    """

    steps: int = 450
    batch: int = 8
    lr: float = 3e-3
    warmup: int = 40
    weight_decay: float = 0.01
    seed: int = 0
    max_nums: tuple[int, ...] = (1, 1, 2, 4)
    wide_share: float = 0.2
    wide_max_num: int = 4
    threads: int = 2


def initial_checkpoint(folder: Path, *, seed: int = 0) -> Path:
    """Write the random-weight toy checkpoint (original format, float32) into ``folder``."""
    from vltools.testing import SPECIAL_TOKENS, write_checkpoint
    from vltools.toy import toy_config

    config = toy_config()
    base_vocab = config["llm_config"]["vocab_size"] - len(SPECIAL_TOKENS)
    return write_checkpoint(folder, config, base_vocab=base_vocab, dtype="float32", seed=seed)


def encode_example(
    vlm: VLModel, scene: dict[str, Any], *, max_num: int
) -> tuple[list[int], list[int], torch.Tensor]:
    """``(input_ids, labels, pixel_values)`` of one scene: the chat prompt plus the answer.

    ``labels`` is -100 over the prompt and the answer's tokens (then ``<|im_end|>``) after it;
    ``pixel_values`` is ``[tiles, 3, 448, 448]``.
    """
    from vltools.images import load_image
    from vltools.prompts import chat_query

    tiled = load_image(scene["image"], max_num=max_num)
    prompt = chat_query(
        scene["question"],
        num_patches_list=[tiled.num_tiles],
        system_message=vlm.system_message,
        tokens_per_tile=vlm.tokens_per_tile,
    ).text
    tok = vlm.tokenizer
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tok(scene["answer"] + IM_END, add_special_tokens=False)["input_ids"]
    return (
        prompt_ids + answer_ids,
        [-100] * len(prompt_ids) + answer_ids,
        tiled.pixel_values,
    )


def _batch(examples: Sequence[tuple[list[int], list[int], Any]], pad_id: int):
    import torch

    length = max(len(ids) for ids, _, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)  # [B, L]
    labels = torch.full((len(examples), length), -100, dtype=torch.long)  # [B, L]
    mask = torch.zeros((len(examples), length), dtype=torch.long)  # [B, L]
    for row, (ids, lab, _) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    pixel_values = torch.cat([pv for _, _, pv in examples], dim=0)  # [tiles, 3, 448, 448]
    return input_ids, labels, mask, pixel_values


def _examples(vlm: VLModel, cfg: TrainConfig, step: int) -> list:
    from vltools.toy import toy_scene

    rng = np.random.default_rng([cfg.seed, step])
    wide = rng.random() < cfg.wide_share
    max_num = cfg.wide_max_num if wide else int(cfg.max_nums[int(rng.integers(len(cfg.max_nums)))])
    out = []
    for j in range(cfg.batch):
        index = step * cfg.batch + j
        if wide:
            scene = toy_scene(index, style="wide_small", kinds=("colour", "shape", "presence"))
        else:
            scene = toy_scene(index)
        out.append(encode_example(vlm, scene.as_dict(), max_num=max_num))
    return out


def train(
    vlm: VLModel,
    cfg: TrainConfig,
    *,
    log_every: int = 10,
    log: Any = None,
    every: int = 0,
    callback: Any = None,
) -> list[float]:
    """Train ``vlm.model`` in place for ``cfg.steps`` steps; returns the loss of every step.

    With ``every`` and ``callback``, ``callback(step)`` runs after every ``every`` steps (the
    script saves a checkpoint there, so a long run can be stopped and still leave weights).
    """
    import torch

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = vlm.model
    for p in model.parameters():
        p.data = p.data.clone()  # off the memory-mapped file: the weights will change
        p.requires_grad_(True)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        done = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done)))

    pad = vlm.tokenizer.pad_token_id or 0
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(cfg.steps):
        input_ids, labels, mask, pixel_values = _batch(_examples(vlm, cfg, step), pad)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            pixel_values=pixel_values,
            labels=labels,
            use_cache=False,
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(out.loss.item())
        if log is not None and (step % log_every == 0 or step == cfg.steps - 1):
            recent = losses[-log_every:]
            log(
                f"step {step + 1}/{cfg.steps} loss {sum(recent) / len(recent):.4f} "
                f"lr {lr_at(step):.2e} tiles {pixel_values.shape[0]} "
                f"{time.perf_counter() - start:.0f}s"
            )
        if every and callback is not None and (step + 1) % every == 0 and step + 1 < cfg.steps:
            model.eval()
            callback(step + 1)
            model.train()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return losses


def save_original(vlm: VLModel, source: Path, folder: Path) -> Path:
    """Write ``vlm``'s weights in the original format, with ``source``'s other files.

    The loader's key plan (original key -> native tensor, the fused ``attn.qkv`` as three row
    ranges) is computed for ``source``'s ``config.json`` and run backwards, so the file has
    exactly the keys and shapes of the original layout; then ``folder`` is loadable by
    ``load_model`` and is byte for byte a function of the weights.
    """
    import torch
    from safetensors.torch import save_file

    from vltools.models import plan_conversion
    from vltools.testing import original_key_shapes

    config = json.loads((Path(source) / "config.json").read_text())
    shapes = original_key_shapes(config)
    params = dict(vlm.model.named_parameters())
    plan = plan_conversion(shapes, {n: tuple(p.shape) for n, p in params.items()})
    parts: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for m in plan.mappings:
        parts.setdefault(m.source, []).append((m.rows[0] if m.rows else 0, params[m.target]))
    tensors = {
        key: torch.cat([t.detach() for _, t in sorted(chunks, key=lambda c: c[0])], dim=0)
        .to(torch.float32)
        .contiguous()
        for key, chunks in sorted(parts.items())
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for item in Path(source).iterdir():
        if (
            item.is_file()
            and not item.name.endswith(".safetensors")
            and not item.name.startswith(".")
        ):
            shutil.copyfile(item, folder / item.name)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def run(
    cfg: TrainConfig, out: Path, *, log: Any = print, save_every: int = 0
) -> tuple[Path, list[float], float]:
    """Build, train and save: ``(folder, losses, seconds)``.

    With ``save_every``, the weights so far are also written to ``out/step-N`` every
    ``save_every`` steps.
    """
    import torch

    from vltools.models import load_model

    torch.set_num_threads(cfg.threads)
    with tempfile.TemporaryDirectory(prefix="vltools-toy-init-") as tmp:
        init = initial_checkpoint(Path(tmp), seed=cfg.seed)
        vlm = load_model(init, device="cpu", dtype="float32")
        start = time.perf_counter()
        losses = train(
            vlm,
            cfg,
            log=log,
            every=save_every,
            callback=lambda step: save_original(vlm, init, Path(out) / f"step-{step}"),
        )
        seconds = time.perf_counter() - start
        save_original(vlm, init, out)
    return Path(out), losses, seconds


def evaluate(vlm: VLModel, *, n: int = 300, log: Any = print) -> dict[str, Any]:
    """The model card's numbers, on held-out scenes (seeds the training never draws).

    Per-kind accuracy at ``max_num=6`` on ``n`` mixed scenes (seed 1) and on ``n`` colour and
    shape questions (seed 2); colour and shape on ``n // 3`` wide panoramas with small shapes
    at ``max_num=1`` and ``12`` (seed 3); the answer's attention in the asked box over 200
    colour scenes at ``max_num=6`` (seed 4), all layers averaged, and the last layer alone on
    the first 50 of them.
    """
    from vltools.toy import box_attention, score, toy_scenes

    results: dict[str, Any] = {}
    mixed = score(vlm, list(toy_scenes(n, seed=1)), max_num=6)
    log(f"all kinds, max_num=6: {mixed}")
    results["all_kinds_max_num_6"] = mixed
    cs = score(vlm, list(toy_scenes(n, seed=2, kinds=("colour", "shape"))), max_num=6)
    log(f"colour and shape, max_num=6: {cs}")
    results["colour_shape_max_num_6"] = cs
    wide = list(toy_scenes(n // 3, seed=3, style="wide_small", kinds=("colour", "shape")))
    for max_num in (1, 12):
        result = score(vlm, wide, max_num=max_num)
        log(f"wide, small shapes, max_num={max_num}: {result}")
        results[f"wide_max_num_{max_num}"] = result
    colour = list(toy_scenes(200, seed=4, kinds=("colour",)))
    att = box_attention(vlm, colour, max_num=6)
    log(f"attention in the box (all layers): {att}")
    results["attention"] = att
    last = vlm.model.config.text_config.num_hidden_layers - 1
    att_last = box_attention(vlm, colour[:50], max_num=6, layers=[last])
    log(f"attention in the box (layer {last} only, first 50 scenes): {att_last}")
    results["attention_last_layer"] = att_last
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the toy InternVL2 on synthetic scenes.")
    parser.add_argument("--out", type=Path, help="folder for the trained checkpoint")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch", type=int, default=TrainConfig.batch)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument(
        "--evaluate", metavar="DIR", help="measure a checkpoint folder (or 'toy') instead"
    )
    parser.add_argument("--save-every", type=int, default=0, help="also save every N steps")
    parser.add_argument("--n", type=int, default=300, help="held-out scenes per measurement")
    args = parser.parse_args(argv)
    if args.evaluate:
        import torch

        from vltools.models import load_model

        torch.set_num_threads(args.threads)
        evaluate(
            load_model(args.evaluate, device="cpu"), n=args.n, log=lambda s: print(s, flush=True)
        )
        return 0
    if args.out is None:
        parser.error("--out is required to train (or pass --evaluate DIR)")
    cfg = TrainConfig(
        steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads
    )
    folder, losses, seconds = run(
        cfg, args.out, log=lambda s: print(s, flush=True), save_every=args.save_every
    )
    print(f"trained {cfg.steps} steps in {seconds:.0f}s; final loss {losses[-1]:.4f}; {folder}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
