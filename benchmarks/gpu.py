"""GPU check: every claim of vltools on CUDA in bfloat16 with SDPA, in one JSON report.

``python -m benchmarks.gpu`` (under 5 minutes on one GPU; the first run also writes the
full-size random checkpoint, about 1 minute of CPU). Loads the full-size random-weight
InternVL2-1B (``vltools.testing.full_size_checkpoint()``) on CUDA in bfloat16 with SDPA and
runs:

- the card's scenarios through ``VLModel.chat``/``batch_chat`` (pure text two turns, one image
  one and two turns, two images combined and separate, a batch of two, a video of 8 frames),
  each prompt checked byte for byte against ``tests/reference/prompts.json``;
- a cached three-turn ``Chat`` against the same turns recomputed (``cache=False``): the
  next-token logits within ``LOGIT_TOL`` of their scale, greedy answers equal on the first
  ``FIRST_K`` tokens (bfloat16 tolerances, as ``tests/test_half_precision.py``);
- a batch against single calls (same tolerance on the answers);
- an attention capture: float32 rows summing to 1, and its extra peak GPU memory against plain
  ``generate`` on the same prompt (target at most 1.5x), at ~1,850 and at ~4,000 prompt tokens;
- the stock-transformers export: ``AutoModelForImageTextToText`` on the exported folder gives
  the VLModel's logits.

Prints one JSON object: device, versions, per-section seconds, tokens/s, peak GPU memory (MiB),
and every check with ``passed`` and what was measured; exits 1 if a check failed. Without CUDA
it prints ``{"cuda": false, ...}`` and exits 0. The answers are random text: the checkpoint has
random weights.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LOGIT_TOL = 0.05  # of max |logit| (bfloat16)
FIRST_K = 4  # greedy answers compared on their first tokens (bfloat16)
MEMORY_TARGET = 1.5  # capture's extra peak / plain generate's extra peak
NEW_TOKENS = 32
GEN = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}


class Cuda:
    """The CUDA calls the report needs; ``dry=True`` (the CPU dry run) makes them no-ops."""

    def __init__(self, torch: Any, *, dry: bool = False) -> None:
        self.torch, self.dry = torch, dry

    def synchronize(self) -> None:
        if not self.dry:
            self.CUDA.synchronize()

    def empty_cache(self) -> None:
        if not self.dry:
            self.CUDA.empty_cache()

    def memory_allocated(self) -> int:
        return 0 if self.dry else self.torch.cuda.memory_allocated()

    def max_memory_allocated(self) -> int:
        return 0 if self.dry else self.CUDA.max_memory_allocated()

    def reset_peak_memory_stats(self) -> None:
        if not self.dry:
            self.CUDA.reset_peak_memory_stats()


CUDA: Cuda | None = None  # set by main()


class Report:
    """Collects timings and checks; ``as_json()`` is the printed report."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {"cuda": True, "sections": {}, "checks": {}}

    def check(self, name: str, passed: bool, **measured: Any) -> None:
        self.data["checks"][name] = {"passed": bool(passed), **measured}

    def section(self, name: str, **values: Any) -> None:
        self.data["sections"][name] = values

    @property
    def failed(self) -> list[str]:
        return [k for k, v in self.data["checks"].items() if not v["passed"]]

    def as_json(self) -> str:
        self.data["passed"] = not self.failed
        self.data["failed"] = self.failed
        return json.dumps(self.data, indent=1, default=str)


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


def _sync_time(torch: Any, fn: Any) -> tuple[Any, float]:
    CUDA.synchronize()
    start = time.perf_counter()
    out = fn()
    CUDA.synchronize()
    return out, time.perf_counter() - start


def _first(vlm: Any, text: str) -> list[int]:
    return vlm.tokenizer(text, add_special_tokens=False).input_ids[:FIRST_K]


def _reference() -> dict[tuple[str, int, int], str]:
    entries = json.loads((REPO / "tests" / "reference" / "prompts.json").read_text("utf-8"))
    return {(e["scenario"], e["call"], e["item"]): e["sha256"] for e in entries}


def card_scenarios(vlm: Any, torch: Any, report: Report) -> None:
    """The card's calls; prompts checked against the reference, answers timed."""
    import vltools.generation as generation
    from vltools.data import sample
    from vltools.images import load_image
    from vltools.video import load_video

    ref = _reference()
    seen: list[str] = []
    original = generation.tokenize

    def spy(model: Any, text: str) -> Any:
        seen.append(text)
        return original(model, text)

    a = load_image(sample("photo_coffee.jpg"), max_num=6).pixel_values  # 7 tiles
    b = load_image(sample("photo_cat.jpg"), max_num=6).pixel_values  # 7 tiles
    ab = torch.cat([a, b])  # two images of 7 tiles: one block of 14 without num_patches_list
    a_b5 = torch.cat([a, b[:5]])  # the reference's separate images have 7 and 5 tiles
    calls = {
        "pure_text_two_turns": [
            (None, "Hello, who are you?", None, None),
            (None, "Can you tell me a story?", "H", None),
        ],
        "single_image_one_turn": [(a, "Please describe the image shortly.", None, None)],
        "single_image_two_turns": [
            (a, "<image>\nPlease describe the image in detail.", None, None),
            (a, "Please write a poem according to the image.", "H", None),
        ],
        "multi_image_combined": [
            (ab, "<image>\nDescribe the two images in detail.", None, None),
            (ab, "What are the similarities and differences between these two images.", "H", None),
        ],
        "multi_image_separate": [
            (a_b5, "Image-1: <image>\nImage-2: <image>\nDescribe the two images in detail.",
             None, [7, 5]),
            (a_b5, "What are the similarities and differences between these two images.", "H",
             [7, 5]),
        ],
    }  # fmt: skip
    generation.tokenize = spy
    try:
        tokens = seconds = 0.0
        for scenario, turns in calls.items():
            history = None
            for call, (pixels, question, hist, npl) in enumerate(turns):
                if hist == "H":
                    # the reference's history answer is the literal "ANSWER1"
                    history = [(history[0][0], "ANSWER1")]
                seen.clear()
                (answer, history), dt = _sync_time(
                    torch,
                    lambda p=pixels, q=question, h=history, n=npl: vlm.chat(
                        p, q, dict(GEN), history=h, return_history=True, num_patches_list=n
                    ),
                )
                tokens += NEW_TOKENS
                seconds += dt
                got = _sha(seen[-1]) if seen else None
                want = ref[(scenario, call, 0)]
                report.check(f"prompt {scenario} call {call}", got == want, seconds=round(dt, 3))
        # batch_chat: two images, one each (the card's batch scenario: 7 and 5 tiles)
        from vltools.generation import batch_prompts

        q = "<image>\nDescribe the image in detail."
        for item, prompt in enumerate(batch_prompts(vlm, [q, q], [[7], [5]])):
            want = ref.get(("batch_one_image_each", 0, item))
            report.check(f"prompt batch_one_image_each item {item}", prompt.sha256 == want)
        (answers, dt) = _sync_time(
            torch, lambda: vlm.batch_chat(a_b5, [q, q], dict(GEN), num_patches_list=[7, 5])
        )
        report.section(
            "batch_chat", seconds=round(dt, 3), tokens_per_s=round(2 * NEW_TOKENS / dt, 1)
        )
        # video: 8 frames of the sample video
        clip = load_video(sample("sample_video.mp4"), num_segments=8)
        question = clip.prompt_prefix() + "What is the red panda doing?"
        seen.clear()
        (answer, dt) = _sync_time(
            torch,
            lambda: vlm.chat(
                clip.pixel_values, question, dict(GEN), num_patches_list=list(clip.num_tiles)
            ),
        )
        want = ref.get(("video_eight_frames", 0, 0))
        report.check("prompt video_eight_frames", _sha(seen[-1]) == want)
        report.section("video", seconds=round(dt, 3), frames=8, answer_chars=len(answer))
        report.section(
            "card_scenarios", seconds=round(seconds, 3), tokens_per_s=round(tokens / seconds, 1)
        )
    finally:
        generation.tokenize = original


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cached_chat(vlm: Any, torch: Any, report: Report) -> None:
    """Three turns with the cache against the same turns recomputed."""
    from vltools.chat import Chat
    from vltools.data import sample
    from vltools.images import load_image

    photo = load_image(sample("photo_coffee.jpg"), max_num=6)
    chart = load_image(sample("chart.png"), max_num=6)
    gen = {"max_new_tokens": 16, "do_sample": False}
    turns = [
        ("Describe the images.", [photo, chart]),
        ("What differs?", None),
        ("And this one?", [photo]),
    ]
    replies = {}
    for cache in (True, False):
        chat = Chat(vlm, cache=cache, **gen)
        out = []
        for text, images in turns:
            reply, _ = _sync_time(torch, lambda t=text, i=images, c=chat: c.ask(t, images=i))
            out.append(reply)
        replies[cache] = out
    on, off = replies[True], replies[False]
    report.section(
        "cached_chat",
        ttft_cached_s=[round(r.ttft_s, 3) for r in on],
        ttft_recomputed_s=[round(r.ttft_s, 3) for r in off],
        cached_tokens=[r.cached_tokens for r in on],
        tokens_per_s=[round(r.tokens_per_s, 1) for r in on],
    )
    same = [_first(vlm, x.text) == _first(vlm, y.text) for x, y in zip(on, off, strict=True)]
    report.check(
        f"cached vs recomputed answers equal on first {FIRST_K} tokens", all(same), per_turn=same
    )
    report.check("turn 2 reuses the image tokens from the cache", on[1].cached_tokens > 14 * 256)
    # logits: the second turn's prompt, whole against a cached prefix
    from vltools.model_building import cache_kwargs
    from vltools.prompts import render_prompt

    pixels = photo.pixel_values.to(device=vlm.device, dtype=vlm.dtype)
    first = render_prompt("Describe.", num_patches_list=[7]).text
    second = render_prompt(
        "What else?", history=[("<image>\nDescribe.", "A cup.")], num_patches_list=[7]
    ).text
    ids1 = vlm.tokenizer(first, return_tensors="pt").input_ids.to(vlm.device)
    ids2 = vlm.tokenizer(second, return_tensors="pt").input_ids.to(vlm.device)
    n = ids1.shape[1]
    with torch.no_grad():
        full = vlm.model(input_ids=ids2, pixel_values=pixels).logits[0, -1].float()
        prefix = vlm.model(input_ids=ids2[:, :n], pixel_values=pixels, use_cache=True)
        cached = vlm.model(input_ids=ids2[:, n:], **cache_kwargs(prefix.past_key_values)).logits[
            0, -1
        ]
    diff = float((cached.float() - full).abs().max())
    scale = float(full.abs().max())
    report.check(
        f"cached vs recomputed logits within {LOGIT_TOL} of scale",
        diff <= LOGIT_TOL * scale,
        max_abs_diff=round(diff, 5),
        logit_scale=round(scale, 3),
    )


def batch_vs_single(vlm: Any, torch: Any, report: Report) -> None:
    from vltools.data import sample
    from vltools.generation import model_batch_chat, model_chat
    from vltools.images import load_image

    a = load_image(sample("photo_coffee.jpg"), max_num=6).pixel_values
    b = load_image(sample("photo_rocket.jpg"), max_num=2).pixel_values
    gen = {"max_new_tokens": 16, "do_sample": False}
    questions = ["What is it?", "Describe it.", "Tell me a joke."]
    pixels = torch.cat([a, b])
    npl = [a.shape[0], b.shape[0], 0]
    batch, dt = _sync_time(
        torch, lambda: model_batch_chat(vlm, pixels, questions, gen, num_patches_list=npl)
    )
    singles = [
        model_chat(vlm, a, questions[0], gen),
        model_chat(vlm, b, questions[1], gen),
        model_chat(vlm, None, questions[2], gen),
    ]
    same = [_first(vlm, x) == _first(vlm, y) for x, y in zip(batch, singles, strict=True)]
    report.section("batch_vs_single", batch_seconds=round(dt, 3))
    report.check(
        f"batched vs single answers equal on first {FIRST_K} tokens", all(same), per_item=same
    )


def attention(vlm: Any, torch: Any, report: Report) -> None:
    """Capture rows in float32 summing to 1; extra peak memory against plain generate."""
    from vltools.attention import capture
    from vltools.data import sample
    from vltools.images import load_image
    from vltools.prompts import chat_query

    tiled = load_image(sample("photo_coffee.jpg"), max_num=6)
    padding = "The cup stands on a wooden table by the window. "
    for label, target in (("short", 0), ("long", 4000)):
        question = "Describe the image in detail."
        while True:
            prompt = chat_query(
                question, num_patches_list=[tiled.num_tiles], system_message=vlm.system_message
            )
            ids = vlm.tokenizer(prompt.text, return_tensors="pt", add_special_tokens=False)
            missing = target - ids.input_ids.shape[1]
            if missing <= 0:
                break
            per = len(vlm.tokenizer(padding * 20, add_special_tokens=False).input_ids) / 20
            question = padding * max(1, int(missing / per)) + question
        kwargs = {
            "input_ids": ids.input_ids.to(vlm.device),
            "attention_mask": ids.attention_mask.to(vlm.device),
            "pixel_values": tiled.pixel_values.to(device=vlm.device, dtype=vlm.dtype),
            "max_new_tokens": 16,
            "min_new_tokens": 16,
            "do_sample": False,
            "eos_token_id": vlm.im_end_id,
            "pad_token_id": vlm.im_end_id,
        }
        peaks = {}
        for method in ("plain", "capture"):
            CUDA.synchronize()
            CUDA.empty_cache()
            base = CUDA.memory_allocated()
            CUDA.reset_peak_memory_stats()
            start = time.perf_counter()
            with torch.no_grad():
                if method == "plain":
                    vlm.model.generate(**kwargs)
                else:
                    with capture(vlm, tiled) as cap:
                        vlm.model.generate(**kwargs)
            CUDA.synchronize()
            peaks[method] = (CUDA.max_memory_allocated() - base, time.perf_counter() - start)
        maps = cap.maps
        sums = maps.weights.sum(-1)
        ratio = peaks["capture"][0] / max(peaks["plain"][0], 1)
        report.section(
            f"attention_{label}",
            prompt_tokens=int(ids.input_ids.shape[1]),
            plain_extra_peak_mib=_mib(peaks["plain"][0]),
            capture_extra_peak_mib=_mib(peaks["capture"][0]),
            plain_s=round(peaks["plain"][1], 3),
            capture_s=round(peaks["capture"][1], 3),
            kept_mib=_mib(maps.weights.nbytes + (maps.vision.cls.nbytes if maps.vision else 0)),
        )
        report.check(
            f"attention rows ({label}) are float32 and sum to 1 within 1e-4",
            str(maps.weights.dtype) == "float32" and float(abs(sums - 1).max()) <= 1e-4,
            max_deviation=float(abs(sums - 1).max()),
        )
        report.check(
            f"attention capture ({label}) extra peak <= {MEMORY_TARGET}x plain generate",
            ratio <= MEMORY_TARGET,
            ratio=round(ratio, 3),
        )


def export(vlm: Any, torch: Any, report: Report) -> None:
    import transformers

    from vltools.export import export_native
    from vltools.prompts import render_prompt

    with tempfile.TemporaryDirectory() as tmp:
        (_, dt) = _sync_time(torch, lambda: export_native(vlm, Path(tmp) / "native"))
        stock = transformers.AutoModelForImageTextToText.from_pretrained(
            str(Path(tmp) / "native"), dtype=torch.bfloat16, attn_implementation="sdpa"
        ).to(vlm.device)
        processor = transformers.AutoProcessor.from_pretrained(str(Path(tmp) / "native"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ours = render_prompt("Hi.", num_patches_list=[1]).text
    expanded = text.replace("<IMG_CONTEXT>", "<img>" + "<IMG_CONTEXT>" * 256 + "</img>")
    report.check("stock chat template renders the card's prompt", expanded == ours)
    ids = vlm.tokenizer(ours, return_tensors="pt").input_ids.to(vlm.device)
    pixels = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    pixels = pixels.to(device=vlm.device, dtype=vlm.dtype)
    with torch.no_grad():
        a = vlm.model(input_ids=ids, pixel_values=pixels).logits.float()
        b = stock(input_ids=ids, pixel_values=pixels).logits.float()
    diff = float((a - b).abs().max())
    report.check("exported model gives the VLModel's logits", diff == 0.0, max_abs_diff=diff)
    report.section("export", seconds=round(dt, 3))
    del stock


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="run every step on the tiny model on the CPU (memory figures 0): checks the script "
        "itself where there is no GPU; its numbers mean nothing",
    )
    args = p.parse_args(argv)
    global CUDA
    try:
        import torch
    except ImportError:
        print(json.dumps({"cuda": False, "message": "torch is not installed; nothing to check."}))
        return 0
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print(
            json.dumps(
                {
                    "cuda": False,
                    "message": "No CUDA device: benchmarks.gpu checks vltools on a GPU and "
                    "skips here. Run it on a machine with an NVIDIA GPU (or --cpu-dry-run to "
                    "check the script on the tiny model).",
                }
            )
        )
        return 0
    import transformers

    import vltools
    from vltools.testing import full_size_checkpoint, tiny_checkpoint

    dry = bool(args.cpu_dry_run)
    CUDA = Cuda(torch, dry=dry)
    report = Report()
    report.data.update(
        device="CPU dry run (tiny model)" if dry else torch.cuda.get_device_name(0),
        torch=torch.__version__,
        transformers=transformers.__version__,
        dtype="bfloat16",
        attn_implementation="sdpa",
        new_tokens_per_answer=NEW_TOKENS,
    )
    start = time.perf_counter()
    path = tiny_checkpoint() if dry else full_size_checkpoint()
    report.section("checkpoint", seconds=round(time.perf_counter() - start, 1))
    start = time.perf_counter()
    vlm = vltools.load_model(
        str(path), device="cpu" if dry else "cuda", dtype="bfloat16", attn_implementation="sdpa"
    )
    report.section(
        "load",
        seconds=round(time.perf_counter() - start, 1),
        gpu_mib=_mib(CUDA.memory_allocated()),
    )
    CUDA.reset_peak_memory_stats()
    steps = (card_scenarios, cached_chat, batch_vs_single, attention, export)
    for step in steps:
        try:
            step(vlm, torch, report)
        except Exception as e:  # a broken step is a failed check, the others still run
            report.check(f"{step.__name__} ran", False, error=f"{type(e).__name__}: {e}")
    report.data["peak_gpu_mib"] = _mib(CUDA.max_memory_allocated())
    report.data["total_seconds"] = round(sum(
        v.get("seconds", 0) for v in report.data["sections"].values()
    ), 1)  # fmt: skip
    print(report.as_json())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
