"""Facts about InternVL2 that every module shares, in one place.

Values follow the model card and the format notes (``docs/FORMAT.md``). A loaded model reads its own facts from
its config (see :class:`vltools.models.VLModel`); these are the InternVL2-1B defaults.
"""

from __future__ import annotations

# Pixels (model card, build_transform)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Geometry (``docs/FORMAT.md``, section 1)
TILE_SIZE: int = 448  # force_image_size: every tile is 448 x 448 pixels
PATCH_SIZE: int = 14  # InternViT patch: a tile is 32 x 32 patches
DOWNSAMPLE_RATIO: float = 0.5  # pixel shuffle: 2 x 2 patches -> one token
TOKENS_PER_TILE: int = 256  # (448 // 14) ** 2 * 0.5 ** 2
TOKEN_GRID: int = 16  # the 256 tokens of one tile are a 16 x 16 grid, row-major

# Tiling defaults (config.json: max_dynamic_patch, min_dynamic_patch, use_thumbnail)
DEFAULT_MAX_NUM: int = 12  # the model's own max_dynamic_patch; the card's examples use 6
DEFAULT_MIN_NUM: int = 1

# Language model
CONTEXT_LENGTH: int = 8192  # InternVL2-1B's training context, the budget vltools checks against

# Token strings (``docs/FORMAT.md``, section 2)
IMG_START_TOKEN: str = "<img>"
IMG_END_TOKEN: str = "</img>"
IMG_CONTEXT_TOKEN: str = "<IMG_CONTEXT>"
IMAGE_PLACEHOLDER: str = "<image>"
IM_START: str = "<|im_start|>"
IM_END: str = "<|im_end|>"
ENDOFTEXT: str = "<|endoftext|>"
INTERNVL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
)

# The Hermes-2 template's default system message (``docs/FORMAT.md``, section 2): 59 characters,
# one ASCII comma plus space after "InternVL", all other punctuation full-width.
HERMES2_SYSTEM_MESSAGE: str = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "
    "是一个有用无害的人工智能助手。"
)

# Where vltools keeps what it builds (tiny checkpoints, cached benchmark inputs)
CACHE_ENV: str = "VLTOOLS_CACHE"
MODEL_ENV: str = "VLTOOLS_MODEL"
DEFAULT_MODEL: str = "OpenGVLab/InternVL2-1B"
