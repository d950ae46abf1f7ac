"""Captions as the condition: encoders, the empty caption as the null, CFG, condition dropout,
a tiny local CLIP, configs and hashes, caption agreement, and a tiny end-to-end text trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.config.study import expand_grid, load_study
from harness.config.trial import ConfigError, build_trial, set_dotted
from harness.data.registry import dataset_shape, load_dataset
from harness.data.sources.canvases import canvases_split
from harness.data.sources.captioned_canvases import CAPTION_VOCABULARY, scene_caption
from harness.evaluation import Evaluator, load_samples, register_domain_extractor
from harness.evaluation.domain import DomainSpec
from harness.evaluation.domain_cnn import ClassifierTrainConfig, DomainCNNConfig
from harness.tasks.text import conditioning_fields, generation_conditions
from harness.tracking.schema import TAG_PROTOCOL_PREFIX
from models.backbone import DiscreteDiT, ModelConfig
from models.data_parallel import draw_micro_batch
from models.samplers import Denoiser
from models.text import PAD, LearnedTextEncoder, TextConfig, WordTokenizer, caption_tokenizer
from models.trainer import TrainConfig as ModelTrainConfig

REPO = Path(__file__).resolve().parents[1]
TEXT = TextConfig(vocabulary=CAPTION_VOCABULARY, max_length=10, depth=1, heads=2)
LEFT = "a 3 to the left of a 7"
SWAPPED = "a 7 to the left of a 3"


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """adaLN-Zero and the head start at zero (the output would not depend on anything): make
    every parameter random so that a dependence on the condition shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


def text_net(text: TextConfig = TEXT, seed: int = 0) -> DiscreteDiT:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=5, grid=(4, 4), text=text, width=32, heads=2, depth=1)
    return randomize(DiscreteDiT(config), seed)


# ---- tokenizer and encoder ----------------------------------------------------------------------


def test_word_tokenizer_pads_with_zero_and_the_empty_caption_is_all_pad() -> None:
    tokenize = WordTokenizer(CAPTION_VOCABULARY, max_length=10)
    ids = tokenize([LEFT, "", "a 3 zebra"])  # (3, 10)
    assert ids.shape == (3, 10) and ids.dtype == torch.long
    assert (ids[0, :8] >= 2).all() and (ids[0, 8:] == PAD).all()
    assert (ids[1] == PAD).all()
    assert ids[2, 2] == 1  # unknown word
    assert ids[0, 1] != ids[0, 7] and ids[0, 0] == ids[0, 6]  # "3" vs "7"; "a" twice
    with pytest.raises(ValueError, match="max_length is 10"):
        tokenize(["a " * 11])


def test_learned_encoder_shapes_and_word_order_changes_pooled_and_token_features() -> None:
    ids = WordTokenizer(CAPTION_VOCABULARY, 10)([LEFT, SWAPPED])  # (2, 10): same words, another order
    for seed in range(4):
        torch.manual_seed(seed)
        tokens, pooled = LearnedTextEncoder(TEXT, width=32).eval()(ids)
        assert tokens.shape == (2, 10, 32) and pooled.shape == (2, 32)
        # Order must show at initialisation already: with positions at 0.02 beside N(0, 1) word
        # embeddings the pooled features of the two differ by ~0.3 % (a bag of words).
        assert (pooled[0] - pooled[1]).norm() > 0.02 * pooled[0].norm()
    with pytest.raises(ValueError, match="max_length"):
        LearnedTextEncoder(TEXT, width=32)(ids[:, :5])


def test_empty_vocabulary_and_unknown_keys_fail_clearly() -> None:
    with pytest.raises(ValueError, match="vocabulary is empty"):
        LearnedTextEncoder(TextConfig(), width=32)
    with pytest.raises(ValueError, match=r"model.text: unknown key\(s\) \['layers'\]"):
        TextConfig.from_dict({"layers": 2})
    with pytest.raises(ValueError, match="model.text.encoder"):
        TextConfig(encoder="bert")


# ---- the network: null condition, word order, CFG -----------------------------------------------


def test_the_empty_caption_is_the_null_condition() -> None:
    net = text_net()
    assert net.config.null_class == PAD and net.config.conditional
    x_t, t = torch.randint(0, 6, (3, 16)), torch.rand(3)
    empty = torch.full((3, 10), net.config.null_class)
    assert torch.equal(net(x_t, t, None), net(x_t, t, empty))
    assert torch.equal(caption_tokenizer(TEXT)(["", "", ""]), empty)


@pytest.mark.parametrize("prefix", [True, False])
def test_word_order_changes_the_logits(prefix: bool) -> None:
    net = text_net(TextConfig(**{**TEXT.to_dict(), "prefix": prefix}))
    ids = caption_tokenizer(net.config.text)([LEFT, SWAPPED])
    x_t, t = torch.full((2, 16), 5), torch.rand(1).expand(2)
    logits = net(x_t, t, ids)  # (2, 16, 6)
    assert logits.shape == (2, 16, 6)
    assert (logits[0] - logits[1]).abs().max() > 1e-3


@pytest.mark.parametrize("batched", [True, False])
def test_cfg_with_captions_is_u_plus_s_times_c_minus_u(batched: bool) -> None:
    net, s = text_net(), 2.5
    ids = caption_tokenizer(TEXT)([LEFT, SWAPPED, "a 1 above a 2"])
    x_t, t = torch.randint(0, 6, (3, 16)), torch.rand(3)
    guided = Denoiser(net, cfg_scale=s, null_class=net.config.null_class, cfg_batched=batched)(x_t, t, ids)
    c, u = net(x_t, t, ids), net(x_t, t, torch.zeros_like(ids))
    torch.testing.assert_close(guided, u + s * (c - u), atol=1e-5, rtol=1e-5)


def test_condition_dropout_drops_whole_captions() -> None:
    """B = S on purpose: a (B,) drop mask broadcast along the caption axis would pass unnoticed."""
    config = ModelConfig(vocab_size=5, grid=(4, 4), text=TEXT)
    tokens = torch.randint(0, 5, (40, 16))
    captions = torch.randint(2, 18, (40, 10))
    for p, expected in [(0.0, "kept"), (1.0, "dropped"), (0.5, "either")]:
        train = ModelTrainConfig(batch_size=10, class_dropout=p)
        g = torch.Generator().manual_seed(3)
        batch = draw_micro_batch(tokens, captions, train, train.build_scheduler(), config, g)
        dropped = (batch.y == PAD).all(dim=1)  # (B,)
        kept = torch.stack([(captions == row).all(dim=1).any() for row in batch.y])  # (B,)
        assert (dropped | kept).all()  # every row is a whole caption or the empty one
        if expected != "either":
            assert (dropped if expected == "dropped" else kept).all()
        else:
            assert dropped.any() and kept.any()


# ---- model config: round trip, old checkpoints, hashes --------------------------------------------


def test_model_config_round_trips_and_omits_text_when_unused() -> None:
    config = ModelConfig(vocab_size=17, grid=(16, 16), text=TEXT)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert "text" not in ModelConfig(vocab_size=17, grid=(16, 16), num_classes=10).to_dict()
    with pytest.raises(ValueError, match="excludes num_classes"):
        ModelConfig(vocab_size=17, grid=(16, 16), num_classes=10, text=TEXT)


def test_model_text_leaves_the_hash_of_configs_without_it_unchanged() -> None:
    plain = build_trial({"data": {"name": "digits"}})
    dump = plain.model_dump(mode="json")
    assert dump["model"].pop("text") is None
    legacy = {k: v for k, v in plain._dump().items() if k in plain.TRAINING_KEYS}
    assert "text" not in legacy["model"]
    texted = build_trial({"data": {"name": "captioned-canvases"}, "model": {"text": {"encoder": "learned"}}})
    untexted = build_trial({"data": {"name": "captioned-canvases"}})
    assert texted.training_hash() != untexted.training_hash()
    assert "text" not in untexted.training_part()["model"]


def test_a_study_can_set_one_text_field_over_the_bases_null() -> None:
    d = {"model": {"text": None}}
    set_dotted(d, "model.text.prefix", False)
    assert d == {"model": {"text": {"prefix": False}}}


def test_text_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="model.text"):
        build_trial({"data": {"name": "captioned-canvases"}, "model": {"text": {"encodr": "learned"}}})
    with pytest.raises(ConfigError, match="has no captions"):
        build_trial({"data": {"name": "digits"}, "model": {"text": {"encoder": "learned"}}})


# ---- data, caption agreement, a tiny trial end to end ---------------------------------------------

SMALL = {"num_train": 300, "num_heldout": 100}


def _small_scenes(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    c = canvases_split(split, SMALL["num_" + split], 16)
    return c.images, c.scene_class


# A cheap stand-in for canvases-cnn (which trains for minutes): same input and classes, tiny.
SMALL_CNN = register_domain_extractor(
    DomainSpec(
        extractor="test-small-canvases-cnn",
        dataset="captioned-canvases",
        load_split=_small_scenes,
        model=DomainCNNConfig(in_channels=1, num_classes=200, input_size=(16, 16), width=4, feature_dim=16),
        train=ClassifierTrainConfig(epochs=3, batch_size=50, threads=1),
    )
)


def test_captioned_canvases_tokens_labels_and_captions_agree() -> None:
    data = load_dataset("captioned-canvases", "train", **SMALL)
    shape = dataset_shape("captioned-canvases", **SMALL)
    assert data.tokens.shape == (300, 256) and data.tokens.max() <= 16 and shape.grid == (16, 16)
    assert [scene_caption(int(s)) for s in data.labels] == list(data.captions)
    assert set(w for c in data.captions for w in c.split()) <= set(shape.caption_vocabulary)
    fields = conditioning_fields({"encoder": "learned"}, shape)
    assert fields["num_classes"] == 0 and fields["text"].vocabulary == CAPTION_VOCABULARY
    assert conditioning_fields(None, shape) == {"num_classes": 200, "text": None}
    config = ModelConfig(vocab_size=17, grid=(16, 16), **fields)
    heldout = load_dataset("captioned-canvases", "heldout", **SMALL)
    conditions = generation_conditions(config, heldout, 250)  # the 100 held-out captions, cycled
    index = torch.arange(250) % 100
    assert torch.equal(conditions.labels, heldout.labels[index])
    assert conditions.captions == tuple(heldout.captions[i] for i in index.tolist())
    assert torch.equal(conditions.ids, caption_tokenizer(config.text)(conditions.captions))
    assert (
        generation_conditions(ModelConfig(vocab_size=17, grid=(16, 16), num_classes=200), heldout, 5) is None
    )


def test_caption_agreement_is_the_fraction_whose_predicted_scene_is_the_captions(session_eval_cache) -> None:
    evaluator = Evaluator(
        "captioned-canvases",
        extractor="test-small-canvases-cnn",
        metrics=["caption_agreement"],
        data_options=SMALL,
        cache_dir=session_eval_cache,
    )
    images, scenes = _small_scenes("heldout")
    # Real held-out canvases with their own scenes: exactly the classifier's held-out accuracy.
    (real,) = evaluator.evaluate(images, 0, labels=scenes)
    assert real.value == pytest.approx(evaluator.extractor.heldout_accuracy)
    options = dict(real.protocol.options)
    assert options["classifier_heldout_accuracy"] == evaluator.extractor.heldout_accuracy
    assert real.protocol.extractor_sha256 == evaluator.extractor.weights_sha256
    # Against the classifier's own predictions it is 1; against another scene each, 0.
    predicted = evaluator.features(images).logits.argmax(dim=1)
    assert evaluator.evaluate(images, 0, labels=predicted)[0].value == 1.0
    assert evaluator.evaluate(images, 0, labels=(predicted + 1) % 200)[0].value == 0.0
    with pytest.raises(ValueError, match="caption_agreement needs"):
        evaluator.evaluate(images, 0)


def quickstart_trials() -> list:
    return expand_grid(load_study(REPO / "search_spaces" / "text_quickstart.yaml"))


def test_the_text_quickstart_plans_a_text_model_a_scene_id_model_and_the_baseline() -> None:
    trials = quickstart_trials()
    assert len(trials) == 17 and len({t.training_hash() for t in trials if not t.sampler.is_baseline}) == 2
    texted = [t for t in trials if t.model.text is not None and not t.sampler.is_baseline]
    assert len(texted) == 8 and {t.sampler.cfg_scale for t in texted} == {1.0, 2.0, 3.0, 4.0}
    assert all(t.data.name == "captioned-canvases" and "caption_agreement" in t.eval.metrics for t in trials)
    assert [t.sampler.name for t in trials if t.sampler.is_baseline] == ["class_marginals"]


def test_a_tiny_text_trial_samples_with_captions_and_logs_caption_agreement(tmp_path, session_eval_cache):
    """The quickstart's text trial at CFG 2, shrunk: few canvases, steps and samples, a tiny classifier."""
    from harness.run.trial import run_trial, set_threads
    from harness.tracking.tracker import _metric_entities, _trial_tags

    (chosen,) = [
        t
        for t in quickstart_trials()
        if t.model.text is not None and t.sampler.cfg_scale == 2.0 and t.sampler.num_steps == 4
    ]
    d = chosen.model_dump(mode="json")
    d["data"]["options"] = SMALL
    d["model"]["text"]["depth"] = 1
    d["train"].update(steps=10, warmup_steps=2, batch_size=16, checkpoint_every=0)
    d["sampler"]["num_steps"] = 2
    d["eval"].update(num_samples=40, batch_size=40, extractor="test-small-canvases-cnn")
    trial = build_trial(d)
    threads = torch.get_num_threads()
    set_threads(1)  # as a trial given one cpu
    try:
        record = run_trial(
            trial, store_root=tmp_path / "store", study_dir=tmp_path / "study", cache_dir=session_eval_cache
        )
    finally:
        torch.set_num_threads(threads)
    assert record.status == "finished", record.error
    assert 0.0 <= record.metrics["caption_agreement"] <= 1.0 and record.metrics["fid"] > 0
    protocol = record.protocols["caption_agreement"]
    assert protocol["extractor"] == "test-small-canvases-cnn" and protocol["num_samples"] == 40
    assert protocol["direction"] == "max" and "option.classifier_heldout_accuracy" in protocol
    samples = load_samples(Path(record.artifacts["samples_dir"]) / "seed_0")
    heldout = load_dataset("captioned-canvases", "heldout", **SMALL)
    assert samples.captions == heldout.captions[:40]
    assert torch.equal(samples.labels, heldout.labels[:40])
    # What MLflow gets (harness.tracking.tracker): the metric, and the protocol as a tag.
    logged = {m.key: m.value for m in _metric_entities(record, timestamp=0)}
    assert logged["caption_agreement"] == record.metrics["caption_agreement"]
    tag = _trial_tags(record, "parent")[f"{TAG_PROTOCOL_PREFIX}caption_agreement"]
    assert (
        json.loads(tag)["option.classifier_heldout_accuracy"]
        == protocol["option.classifier_heldout_accuracy"]
    )


def test_the_report_states_the_caption_agreement_ceiling() -> None:
    from reports.markdown import ceiling_section

    protocol = {"extractor": "canvases-cnn", "option.classifier_heldout_accuracy": 0.861}
    record = {"protocols": {"caption_agreement": protocol, "fid": {"extractor": "canvases-cnn"}}}
    lines = ceiling_section([record])
    assert lines[0] == "## Ceilings"
    assert [line for line in lines if "0.861" in line and "caption_agreement" in line]
    assert not [line for line in lines if "`fid`" in line]
    assert ceiling_section([{"protocols": {"fid": {}}}]) == [] == ceiling_section([])
