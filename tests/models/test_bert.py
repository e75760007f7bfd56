"""BERT-family teachers: sub-models sliced from a Hugging Face encoder compute what the units they keep compute."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from shoal.errors import ConfigError, ModelError  # noqa: E402
from shoal.models.bert import build_text_submodel, encoder_config, pooled_text_features  # noqa: E402
from shoal.models.spec import SubModelSpec  # noqa: E402
from tests.conftest import bert_dir, make_bert  # noqa: E402


def _batch():
    ids = torch.randint(1, 100, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0   # padding: the mean is over real tokens only
    mask[2, 3:] = 0
    return ids, mask


def test_the_whole_spec_is_the_teacher():
    teacher = make_bert()
    config = encoder_config(teacher, 12, 2)
    assert (config.depth, config.embed_dim, config.num_heads, config.mlp_hidden, config.head_dim) == (3, 32, 4, 64, 8)
    spec = SubModelSpec(tuple(range(3)), tuple(range(32)), (tuple(range(4)),) * 3, (tuple(range(64)),) * 3)
    ids, mask = _batch()
    with torch.no_grad():
        assert torch.allclose(pooled_text_features(build_text_submodel(teacher, spec), ids, mask),
                              pooled_text_features(teacher, ids, mask), atol=1e-5)


def test_dropped_heads_and_neurons_are_zeroed_units_of_the_teacher():
    """Keeping every channel, a sub-model without some heads and neurons equals the teacher with those
    units' contributions zeroed (their columns of the output projections)."""
    teacher = make_bert()
    heads, neurons = ((0, 2), (1,), (0, 1, 2, 3)), (tuple(range(0, 64, 2)), tuple(range(10)), tuple(range(64)))
    spec = SubModelSpec((0, 1, 2), tuple(range(32)), heads, neurons)
    sub = build_text_submodel(teacher, spec)
    masked = make_bert()
    with torch.no_grad():
        for layer, keep_h, keep_n in zip(masked.encoder.layer, heads, neurons):
            for h in set(range(4)) - set(keep_h):
                layer.attention.output.dense.weight[:, h * 8:(h + 1) * 8] = 0
            for n in set(range(64)) - set(keep_n):
                layer.output.dense.weight[:, n] = 0
        ids, mask = _batch()
        assert torch.allclose(pooled_text_features(sub, ids, mask), pooled_text_features(masked, ids, mask), atol=1e-5)
    assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in teacher.parameters())


def test_a_narrow_shallow_sub_model_is_physically_smaller_and_runs():
    teacher = make_bert()
    spec = SubModelSpec((0, 2), tuple(range(0, 32, 2)), ((1,), ()), ((), tuple(range(8))))   # branches dropped
    sub = build_text_submodel(teacher, spec)
    ids, mask = _batch()
    with torch.no_grad():
        features = pooled_text_features(sub, ids, mask)
    assert features.shape == (3, 16) and torch.isfinite(features).all()
    assert len(sub.encoder.layer) == 2 and sub.embeddings.word_embeddings.weight.shape == (100, 16)
    assert sub.encoder.layer[0].attention.self.query.weight.shape == (8, 16)      # one head of 8
    assert sub.encoder.layer[1].intermediate.dense.weight.shape == (8, 16)
    assert teacher.embeddings.word_embeddings.weight.shape == (100, 32)           # the teacher is unchanged


def test_what_cannot_be_split_is_refused_by_name():
    gpt = transformers.GPT2Model(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50))
    with pytest.raises(ModelError, match="GPT2Model is 'gpt2'"):
        encoder_config(gpt, 12, 2)
    with pytest.raises(ModelError, match="Linear is not a Hugging Face model"):
        encoder_config(torch.nn.Linear(2, 2), 12, 2)
    spec = SubModelSpec((0, 5), tuple(range(32)), ((0,), (0,)), ((0,), (0,)))
    with pytest.raises(ConfigError, match=r"layers index 5 is out of range \(teacher has 3\)"):
        build_text_submodel(make_bert(), spec)


# -- a local encoder directory -------------------------------------------------------------------

def test_a_local_encoder_directory_loads_with_its_tokenizer(tmp_path):
    from shoal.models.bert import TextClassifier
    from shoal.models.text_teacher import load_text_encoder

    loaded = load_text_encoder(bert_dir(tmp_path))
    assert loaded.model.config.hidden_size == 32 and loaded.model.config.vocab_size == 100
    batch = loaded.tokenizer(["a very good film", "dull"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2 and int(batch["attention_mask"][1].sum()) == 3   # [CLS] dull [SEP]
    teacher = TextClassifier(loaded.model, classes=2)
    with torch.no_grad():
        assert teacher(torch.stack([batch["input_ids"], batch["attention_mask"]], 1)).shape == (2, 2)


def test_a_directory_without_weights_tokenizer_or_bert_is_one_line(tmp_path):
    from shoal.models.text_teacher import load_text_encoder

    with pytest.raises(ModelError, match="config.json is missing"):
        load_text_encoder(tmp_path / "nothing")
    with pytest.raises(ModelError, match="no tokenizer"):
        load_text_encoder(bert_dir(tmp_path / "a", tokenizer=False))
    with pytest.raises(ModelError, match="a pickle shoal does not load"):
        load_text_encoder(bert_dir(tmp_path / "b", safetensors=False))
    gpt = transformers.GPT2Model(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50))
    gpt.save_pretrained(tmp_path / "c")
    (tmp_path / "c" / "vocab.txt").write_text("x\n")
    with pytest.raises(ModelError, match=r"shoal splits BERT encoders \(bert\); .*c is 'gpt2'"):
        load_text_encoder(tmp_path / "c")


def test_the_closed_form_cost_is_what_the_sub_model_has_and_computes():
    from torch.utils.flop_counter import FlopCounterMode

    from shoal.models.accounting import text_shape_cost

    def text_spec_cost(config, spec, seq_len):
        return text_shape_cost(config, spec.width, spec.head_counts, spec.mlp_widths, seq_len)

    teacher = make_bert()
    teacher.config._attn_implementation = "eager"   # matrix products the counter sees
    config = encoder_config(teacher, 12, 2)
    specs = [SubModelSpec(tuple(range(3)), tuple(range(32)), (tuple(range(4)),) * 3, (tuple(range(64)),) * 3),
             SubModelSpec((0, 2), tuple(range(0, 32, 2)), ((1,), ()), ((), tuple(range(8))))]
    from shoal.models.bert import TextClassifier

    for spec in specs:
        sub = TextClassifier(build_text_submodel(teacher, spec), 2)   # with its task head, as the config has
        cost = text_spec_cost(config, spec, seq_len=12)
        assert cost.params == sum(p.numel() for p in sub.parameters())
        x = torch.stack([torch.randint(1, 100, (1, 12)), torch.ones(1, 12, dtype=torch.long)], 1)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            sub(x)
        assert cost.flops == counter.get_total_flops()
    with pytest.raises(ConfigError, match="sequence length must be 1..40"):
        text_spec_cost(config, specs[0], seq_len=41)
