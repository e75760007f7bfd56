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
