"""The text family behind shoal's common seams: config, surgery, features, importance, example inputs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from shoal.errors import ConfigError  # noqa: E402
from shoal.models.accounting import count_params, spec_cost  # noqa: E402
from shoal.models.bert import TextClassifier, encoder_config  # noqa: E402
from shoal.models.config import TextConfig, ViTConfig, config_from_dict  # noqa: E402
from shoal.models.importance import _install_gates, _unit_gates, compute_importance  # noqa: E402
from shoal.models.spec import SubModelSpec  # noqa: E402
from shoal.models.surgery import build_submodel, example_input, head_of, pooled_features, width_of  # noqa: E402
from tests.conftest import make_bert  # noqa: E402


def _teacher(seed: int = 0) -> tuple[TextClassifier, TextConfig]:
    torch.manual_seed(seed + 1)
    teacher = TextClassifier(make_bert(seed), 3).eval()
    return teacher, encoder_config(teacher.encoder, 16, 3)


def _texts() -> torch.Tensor:
    """(4, 2, 16) ids and right-padded masks of lengths 16, 9, 5 and 1."""
    ids = torch.randint(1, 100, (4, 16), generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(4, 16, dtype=torch.long)
    for row, length in enumerate((16, 9, 5, 1)):
        mask[row, :length] = 1
    return torch.stack([ids * mask, mask], 1)


def test_a_text_config_round_trips_and_is_told_apart_from_a_vit_config(tiny_config):
    _, config = _teacher()
    assert config_from_dict(config.to_dict()) == config and config.to_dict()["family"] == "bert"
    assert config_from_dict(tiny_config.to_dict()) == tiny_config and isinstance(tiny_config, ViTConfig)
    assert "family" not in tiny_config.to_dict()   # ViT fingerprints stay what they were
    assert config.fingerprint() != encoder_config(make_bert(), 32, 3).fingerprint()   # the length is part of it
    assert config.input_shape == (2, 16) and config.head_dim == 8 and config.global_pool == "avg"
    with pytest.raises(ConfigError, match="seq_len 50 exceeds the 40 positions"):
        TextConfig.from_dict({**config.to_dict(), "seq_len": 50})
    with pytest.raises(ConfigError, match="no field"):
        config_from_dict({**config.to_dict(), "patch_size": 4})


def test_the_whole_spec_is_the_teacher_and_a_part_reads_the_teachers_head_on_its_channels():
    teacher, config = _teacher()
    x = _texts()
    with torch.no_grad():
        assert torch.allclose(build_submodel(config, SubModelSpec.full(config), teacher)(x), teacher(x), atol=1e-5)
    spec = SubModelSpec((0, 2), tuple(range(1, 32, 3)), ((0, 3), (1,)), (tuple(range(20)), tuple(range(5, 9))))
    sub = build_submodel(config, spec.bound_to(config), teacher)
    assert width_of(sub) == len(spec.channels) and pooled_features(sub, x).shape == (4, len(spec.channels))
    assert torch.equal(head_of(sub).weight, teacher.head.weight[:, list(spec.channels)])
    assert count_params(sub) == spec_cost(config, spec).params
    # a plan directory rebuilds it without the teacher: a random template, then its weights
    again = build_submodel(config, spec, device="meta")
    again.load_state_dict(sub.state_dict(), strict=True, assign=True)
    with torch.no_grad():
        assert torch.equal(again(x), sub(x))


def test_padding_costs_nothing_and_changes_nothing():
    """A batch is cut to its longest text before the encoder runs: one text padded to 16 tokens gives
    what it gives alone at its own length."""
    teacher, _ = _teacher()
    x = _texts()
    with torch.no_grad():
        alone = teacher(x[1:2, :, :9])
        assert torch.allclose(teacher(x[1:2]), alone, atol=1e-5)
        assert torch.allclose(teacher(x)[1:2], alone, atol=1e-5)
    with pytest.raises(ConfigError, match=r"\(B, 2, L\)"):
        teacher(x[:, 0])


def test_a_head_gate_at_zero_is_the_sub_model_without_that_head():
    """The importance gates mean what their names say: closing head 2 of layer 1 (every other unit
    open) computes what the sub-model that keeps every unit but that head computes."""
    teacher, config = _teacher()
    x = _texts()
    gates = _unit_gates(config, len(x), torch.device("cpu"))
    gates["heads"][1, :, :, 2] = 0.0
    handles = _install_gates(teacher, gates, config.num_heads, config.head_dim)
    try:
        with torch.no_grad():
            gated = teacher(x)
    finally:
        for handle in handles:
            handle.remove()
    full = SubModelSpec.full(config)
    heads = tuple(h if k != 1 else (0, 1, 3) for k, h in enumerate(full.heads))
    without = build_submodel(config, SubModelSpec(full.layers, full.channels, heads, full.neurons), teacher)
    with torch.no_grad():
        assert torch.allclose(gated, without(x), atol=1e-5)
        assert not torch.allclose(gated, teacher(x), atol=1e-3)


def test_every_rule_scores_every_unit_of_a_text_teacher():
    teacher, config = _teacher()
    x, labels = _texts(), torch.tensor([0, 1, 2, 0])
    for rule in ("mixed", "taylor", "magnitude", "kl", "random"):
        scores = compute_importance(teacher, config, x, labels, rule)   # type: ignore[arg-type]
        assert scores.heads.shape == (3, 4) and scores.neurons.shape == (3, 64)
        assert scores.channels.shape == (32,) and scores.blocks.shape == (3,)
        assert all(torch.isfinite(t).all() and (t >= 0).all() for t in scores.to_tensors().values())
    magnitude = compute_importance(teacher, config, x, labels, "magnitude")
    att = teacher.encoder.encoder.layer[0].attention
    head0 = sum(getattr(att.self, n).weight.detach()[:8].pow(2).sum() for n in ("query", "key", "value"))
    head0 = head0 + att.output.dense.weight.detach()[:, :8].pow(2).sum()
    assert float(magnitude.heads[0, 0]) == pytest.approx(float(head0.sqrt()), rel=1e-5)


def test_an_example_text_is_valid_token_ids_at_the_asked_length():
    _, config = _teacher()
    x = example_input(config, 3, tokens=7)
    assert x.shape == (3, 2, 7) and x.dtype == torch.int64 and bool((x[:, 1] == 1).all())
    assert bool((x[:, 0] != config.pad_token_id).all()) and int(x[:, 0].max()) < config.vocab_size
    assert example_input(config).shape == (1, 2, 16)


def test_a_sub_model_shares_no_weight_with_its_teacher():
    """The teacher's module tree is copied without its weights: every kept module is a new slice, so
    calibrating a sub-model cannot change the teacher (or another sub-model)."""
    teacher, config = _teacher()
    spec = SubModelSpec((1,), tuple(range(0, 32, 2)), ((),), ((3, 7),))   # a zero-width attention branch too
    sub = build_submodel(config, spec.bound_to(config), teacher)
    assert not {id(p) for p in sub.parameters()} & {id(p) for p in teacher.parameters()}
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
