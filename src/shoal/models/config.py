"""The shape of a teacher family: `ViTConfig` (a timm VisionTransformer) or `TextConfig` (a BERT encoder).

A sub-model spec only makes sense against the teacher it was cut from, so
every spec, predictor and plan carries the family's `fingerprint()`. Both
configs answer what search, accounting and surgery ask of a family (depth,
embed_dim, num_heads, head_dim, mlp_hidden, num_classes, seq_len,
input_shape); `config_from_dict` reads either back (a text config's dict
names its family, "bert"; a ViT's has no family key, so the fingerprints of
every existing ViT profile and plan stay what they were).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from shoal.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import torch.nn as nn

PoolType = Literal["token", "avg"]


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a timm `VisionTransformer` teacher (one fused qkv per block).

    Attributes:
        img_size: Input height = width in pixels.
        patch_size: Patch height = width.
        in_chans: Input channels.
        num_classes: Classes of the task head.
        embed_dim: Residual width d.
        depth: Number of blocks L.
        num_heads: Heads per block h.
        head_dim: Width of one head (kept by every sub-model).
        mlp_hidden: MLP width D.
        qkv_bias: Whether the fused qkv Linear has a bias.
        class_token: Whether a class token is prepended.
        reg_tokens: Number of register tokens.
        no_embed_class: Position embedding excludes the prefix tokens (DeiT-3).
        pre_norm: LayerNorm after the embeddings (CLIP style).
        global_pool: 'token' (class token) or 'avg' (mean of patch tokens).
        fc_norm: Final norm applied after pooling instead of per token.
        final_norm: A final norm exists (per token, or after pooling with fc_norm).
        layer_scale: Blocks carry LayerScale gammas.
        qk_norm: Per-head LayerNorm on q and k.
        norm_eps: LayerNorm epsilon.
        act: MLP activation name.
    """

    img_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    embed_dim: int
    depth: int
    num_heads: int
    head_dim: int
    mlp_hidden: int
    qkv_bias: bool = True
    class_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False
    pre_norm: bool = False
    global_pool: PoolType = "token"
    fc_norm: bool = False
    final_norm: bool = True
    layer_scale: bool = False
    qk_norm: bool = False
    norm_eps: float = 1e-6
    act: Literal["gelu", "gelu_tanh", "relu"] = "gelu"

    family = "vit"

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth",
                     "num_heads", "head_dim", "mlp_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ViTConfig.{name} must be a positive integer, got {value!r}")
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"ViTConfig.img_size={self.img_size} is not a multiple of patch_size={self.patch_size}")
        if self.global_pool not in ("token", "avg"):
            raise ConfigError(f"ViTConfig.global_pool must be 'token' or 'avg', got {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ConfigError("ViTConfig.global_pool='token' needs class_token=True")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    @property
    def seq_len(self) -> int:
        """Tokens per image S (patches plus prefix tokens)."""
        return self.num_patches + self.num_prefix_tokens

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        return (self.in_chans, self.img_size, self.img_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"ViTConfig has no field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def fingerprint(self) -> str:
        """Short stable hash of the family; specs and predictors of another family are refused."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def timm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `timm.models.vision_transformer.VisionTransformer`."""
        return dict(
            img_size=self.img_size, patch_size=self.patch_size, in_chans=self.in_chans,
            num_classes=self.num_classes, embed_dim=self.embed_dim, depth=self.depth,
            num_heads=self.num_heads, mlp_ratio=self.mlp_hidden / self.embed_dim,
            qkv_bias=self.qkv_bias, qk_norm=self.qk_norm, class_token=self.class_token,
            reg_tokens=self.reg_tokens, no_embed_class=self.no_embed_class, pre_norm=self.pre_norm,
            global_pool=self.global_pool, fc_norm=self.fc_norm, final_norm=self.final_norm,
            init_values=1e-5 if self.layer_scale else None,
        )


def config_from_timm(model: nn.Module, name: str = "model") -> ViTConfig:
    """Read the `ViTConfig` of a timm VisionTransformer, refusing what surgery cannot cut.

    Args:
        model: A timm `VisionTransformer` instance.
        name: How to call the model in error messages.

    Raises:
        ModelError: The architecture is not a plain timm ViT/DeiT (names the offending part).
    """
    import torch.nn as nn  # here: the config itself is read without torch (the CLI's --help)
    from timm.layers import Mlp
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    kind = type(model).__name__
    if type(model) is not VisionTransformer:
        raise ModelError(
            f"{name} is a {kind}; shoal decomposes plain timm VisionTransformer/DeiT models only "
            "(not distilled DeiT, Swin, BEiT, EVA or hybrids)")
    if model.attn_pool is not None:
        raise ModelError(f"{name} uses attention pooling ({model.global_pool!r}); use 'token' or 'avg' pooling")
    if model.global_pool not in ("token", "avg"):
        raise ModelError(f"{name} uses global_pool={model.global_pool!r}; shoal supports 'token' and 'avg'")
    if model.dynamic_img_size:
        raise ModelError(f"{name} uses dynamic_img_size; create it with a fixed image size")
    if not isinstance(model.head, nn.Linear):
        raise ModelError(f"{name} has no linear classification head (num_classes=0?); give it a task head")
    if len(model.blocks) == 0:
        raise ModelError(f"{name} has no transformer blocks")

    first = model.blocks[0]
    for i, block in enumerate(model.blocks):
        if type(block) is not Block:
            raise ModelError(f"{name}.blocks[{i}] is a {type(block).__name__}; only timm Block is supported")
        if type(block.attn) is not Attention or type(block.mlp) is not Mlp:
            raise ModelError(
                f"{name}.blocks[{i}] uses {type(block.attn).__name__}/{type(block.mlp).__name__}; "
                "only timm Attention (fused qkv) and Mlp are supported")
        if not isinstance(block.attn.norm, nn.Identity) or not isinstance(block.mlp.norm, nn.Identity):
            raise ModelError(f"{name}.blocks[{i}] uses scale norms inside attention/MLP; not supported")
        if getattr(block.attn, "gate", None) is not None:
            raise ModelError(f"{name}.blocks[{i}] uses gated attention; not supported")
        if block.attn.proj.bias is None or block.mlp.fc1.bias is None or block.mlp.fc2.bias is None:
            raise ModelError(f"{name}.blocks[{i}] has projections without bias; not supported")
        if block.attn.num_heads != first.attn.num_heads or block.mlp.fc1.out_features != first.mlp.fc1.out_features:
            raise ModelError(f"{name}.blocks[{i}] differs in shape from blocks[0]; shoal needs uniform blocks")

    act = type(first.mlp.act).__name__
    act_name = {"GELU": "gelu", "ReLU": "relu"}.get(act)
    if act == "GELU" and getattr(first.mlp.act, "approximate", "none") == "tanh":
        act_name = "gelu_tanh"
    if act_name is None:
        raise ModelError(f"{name} uses activation {act}; shoal supports GELU and ReLU")
    norm = first.norm1
    if not isinstance(norm, nn.LayerNorm):
        raise ModelError(f"{name} uses {type(norm).__name__} norms; shoal supports LayerNorm")

    return ViTConfig(
        img_size=int(model.patch_embed.img_size[0]),
        patch_size=int(model.patch_embed.patch_size[0]),
        in_chans=int(model.patch_embed.proj.in_channels),
        num_classes=int(model.head.out_features),
        embed_dim=int(model.embed_dim),
        depth=len(model.blocks),
        num_heads=int(first.attn.num_heads),
        head_dim=int(first.attn.head_dim),
        mlp_hidden=int(first.mlp.fc1.out_features),
        qkv_bias=first.attn.qkv.bias is not None,
        class_token=bool(model.has_class_token),
        reg_tokens=int(model.num_reg_tokens),
        no_embed_class=bool(model.no_embed_class),
        pre_norm=not isinstance(model.norm_pre, nn.Identity),
        global_pool=model.global_pool,
        fc_norm=not isinstance(model.fc_norm, nn.Identity),
        final_norm=not (isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.Identity)),
        layer_scale=not isinstance(first.ls1, nn.Identity),
        qk_norm=not isinstance(first.attn.q_norm, nn.Identity),
        norm_eps=float(norm.eps),
        act=act_name,
    )


TEXT_FAMILY = "bert"


@dataclass(frozen=True)
class TextConfig:
    """Architecture of a BERT-family teacher (`transformers.BertModel`) with its task head.

    Attributes:
        depth: Encoder layers L.
        embed_dim: Hidden size d (residual channels).
        num_heads: Attention heads per layer h.
        mlp_hidden: Intermediate (MLP) size D.
        vocab_size: Token ids accepted: 0..vocab_size - 1.
        max_positions: Position embeddings (the encoder's own length limit).
        seq_len: Tokens per input the plan is made for and serving accepts at most (the
            teacher's tokenisation length); latency is predicted at this length.
        num_classes: Classes of the task head.
        type_vocab_size: Token type embeddings.
        pad_token_id: The padding id (its embedding row is the padding one).
        norm_eps: LayerNorm epsilon.
        act: Intermediate activation (Hugging Face name).
    """

    depth: int
    embed_dim: int
    num_heads: int
    mlp_hidden: int
    vocab_size: int
    max_positions: int
    seq_len: int
    num_classes: int
    type_vocab_size: int = 2
    pad_token_id: int = 0
    norm_eps: float = 1e-12
    act: str = "gelu"

    def __post_init__(self) -> None:
        for name in ("depth", "embed_dim", "num_heads", "mlp_hidden", "vocab_size", "max_positions", "seq_len",
                     "num_classes", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"TextConfig.{name} must be a positive integer, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"TextConfig: hidden size {self.embed_dim} is not a multiple of {self.num_heads} heads")
        if self.seq_len > self.max_positions:
            raise ConfigError(f"TextConfig.seq_len {self.seq_len} exceeds the {self.max_positions} positions")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"TextConfig.pad_token_id {self.pad_token_id} is not a token id")

    family = TEXT_FAMILY
    num_prefix_tokens = 0

    @property
    def global_pool(self) -> Literal["avg"]:
        """Sub-models pool by the mean over real tokens (no class token)."""
        return "avg"

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def input_shape(self) -> tuple[int, int]:
        """(2, seq_len): one input's token ids and attention mask, stacked (right-padded)."""
        return (2, self.seq_len)

    def to_dict(self) -> dict[str, Any]:
        return {"family": TEXT_FAMILY, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextConfig:
        data = dict(data)
        if data.pop("family", TEXT_FAMILY) != TEXT_FAMILY:
            raise ConfigError(f"not a {TEXT_FAMILY} config: {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"TextConfig has no field(s) {unknown}; known fields are {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"TextConfig: {exc}") from None

    def fingerprint(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def hf_config(self) -> Any:
        """The `transformers.BertConfig` of this shape (a random encoder to time, or to load weights into)."""
        import transformers

        return transformers.BertConfig(
            vocab_size=self.vocab_size, hidden_size=self.embed_dim, num_hidden_layers=self.depth,
            num_attention_heads=self.num_heads, intermediate_size=self.mlp_hidden, hidden_act=self.act,
            max_position_embeddings=self.max_positions, type_vocab_size=self.type_vocab_size,
            layer_norm_eps=self.norm_eps, pad_token_id=self.pad_token_id, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)

    @classmethod
    def of_hf(cls, config: Any, seq_len: int, num_classes: int) -> TextConfig:
        """The shape of a Hugging Face BERT config (checked by `shoal.models.bert.check_text_architecture`)."""
        return cls(int(config.num_hidden_layers), int(config.hidden_size), int(config.num_attention_heads),
                   int(config.intermediate_size), int(config.vocab_size), int(config.max_position_embeddings),
                   min(int(seq_len), int(config.max_position_embeddings)), int(num_classes),
                   int(config.type_vocab_size), int(config.pad_token_id or 0), float(config.layer_norm_eps),
                   str(config.hidden_act))


TeacherConfig = ViTConfig | TextConfig


def config_from_dict(data: dict[str, Any]) -> TeacherConfig:
    """A family config from its `to_dict()`: a text config names its family, a ViT config does not."""
    if not isinstance(data, dict):
        raise ConfigError(f"a teacher config must be a mapping, got {type(data).__name__}")
    if "family" in data:
        return TextConfig.from_dict(data)
    return ViTConfig.from_dict(data)
