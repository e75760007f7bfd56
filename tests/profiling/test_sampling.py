from __future__ import annotations

import pytest

from shoal.errors import ConfigError
from shoal.profiling.sampling import sample_shapes, shape_to_spec
from shoal.profiling.settings import SamplerSettings


def test_sample_is_deterministic_unique_and_valid(tiny_config):
    settings = SamplerSettings(40, seed=3)
    shapes = sample_shapes(tiny_config, settings)
    assert shapes == sample_shapes(tiny_config, settings)
    assert shapes != sample_shapes(tiny_config, SamplerSettings(40, seed=4))
    assert len(shapes) == 40 and len({s.id for s in shapes}) == 40
    for shape in shapes:
        spec = shape_to_spec(tiny_config, shape)
        assert spec.family == tiny_config.fingerprint()
        assert all(h or m for h, m in zip(shape.head_counts, shape.mlp_widths))


def test_sample_covers_the_space_and_its_extremes(tiny_config):
    c = tiny_config
    shapes = sample_shapes(c, SamplerSettings(80, seed=0))
    depths = {len(s.layers) for s in shapes}
    assert depths == set(range(1, c.depth + 1))
    widths = [s.width for s in shapes]
    assert min(widths) == 8 and max(widths) == c.embed_dim
    full = shapes[0]
    assert full.width == c.embed_dim and full.head_counts == (c.num_heads,) * c.depth
    assert full.mlp_widths == (c.mlp_hidden,) * c.depth
    # every quarter of the width range holds about a quarter of the sample (Latin hypercube)
    span = c.embed_dim - 8
    quarters = [sum(8 + q * span / 4 <= w < 8 + (q + 1) * span / 4 for w in widths) for q in range(4)]
    assert min(quarters) >= 10
    assert any(0 in s.head_counts for s in shapes) and any(0 in s.mlp_widths for s in shapes)


def test_sampler_settings_validation():
    with pytest.raises(ConfigError, match="samples"):
        SamplerSettings(1)
    with pytest.raises(ConfigError, match="min_width"):
        SamplerSettings(10, min_width=0)


def test_a_text_family_is_sampled_across_sequence_lengths():
    """Latency is learnt as a function of length: a text family's shapes are timed at 8 to seq_len tokens,
    spread on a log scale, and the length enters every token term of the predictor's features."""
    import numpy as np

    from shoal.models.config import TextConfig
    from shoal.models.partition import SubModelShape
    from shoal.predictors.features import feature_matrix, feature_names

    c = TextConfig(depth=3, embed_dim=32, num_heads=4, mlp_hidden=64, vocab_size=100, max_positions=64, seq_len=64,
                   num_classes=2)
    shapes = sample_shapes(c, SamplerSettings(60, seed=0))
    tokens = [s.tokens or c.seq_len for s in shapes]
    assert min(tokens) == 8 and max(tokens) == 64 and len(set(tokens)) > 20
    assert sum(t < 23 for t in tokens) >= 15   # log scale: the geometric midpoint of 8..64 is ~23
    assert shapes == sample_shapes(c, SamplerSettings(60, seed=0))
    assert SubModelShape.from_dict(shapes[5].to_dict()) == shapes[5]
    full = shapes[0]
    short, long = SubModelShape.of(full, 16), SubModelShape.of(full, 32)
    names = list(feature_names("terms"))
    x = feature_matrix(c, [short, long], "terms")
    attn, mlp = names.index("f_attn"), names.index("f_mlp")
    assert np.isclose(x[1, attn], 4 * x[0, attn]) and np.isclose(x[1, mlp], 2 * x[0, mlp])   # S² and S
    assert "tokens" not in SubModelShape.of(full).to_dict()   # a ViT shape's id is what it was
