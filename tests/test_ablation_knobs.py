"""The ablation mechanisms as model knobs: guidance=mean, Looped TF with guidance, TRM's
stochastic decoder and random z0; the run-id fingerprint; records that allow re-voting."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from gram_bench.harness.config import TrainConfig, resolve
from gram_bench.harness.ablation import variant_sets
from gram_bench.core.variants import VARIANTS, by_key
from gram_bench.metrics.records import answer_ids, example_records, truncate
from gram_bench.metrics.summary import summarize
from gram_bench.models.gram import GRAM
from gram_bench.models.looped import LoopedTF
from gram_bench.models.trm import TRM
from gram_bench.tasks import Layout
from conftest import make_model, random_batch

LAYOUT = Layout(28, 8, 6)
GRAM_CFG = GRAM.Config(hidden=32, heads=2, ffn_hidden=64, l_layers=1, h_layers=1, K=1, T=2, n_sup=2, prefix=1)
TRM_CFG = TRM.Config(hidden=32, heads=2, ffn_hidden=64, layers=1, n=1, T=2, n_sup=2, prefix=1)
LOOP_CFG = LoopedTF.Config(hidden=32, heads=2, ffn_hidden=64, layers=1, loops=3, prefix=1)
CPU = torch.device("cpu")


def make(cls, cfg, **changes):
    return make_model(cls, cfg, LAYOUT, **changes)


def batch(b: int = 4) -> dict:
    return random_batch(b, 28, 8, (1, 3), (3, 6))


def samples(m, n=6, seed=0):
    m.eval()
    x, pid = batch(2)["inputs"], torch.zeros(2, dtype=torch.long)
    torch.manual_seed(seed)
    return m.sample(x, pid, n).preds


def test_mean_guidance_is_deterministic_at_inference_and_pays_a_mean_penalty():
    m = make(GRAM, GRAM_CFG, guidance="mean").train()
    torch.nn.init.normal_(m.guide.posterior.out.weight, std=0.05)
    b = batch()
    loss, logs, _ = m.loss(b, m.initial_carry(b, CPU))
    assert float(logs["kl"]) > 0
    loss.backward()
    assert m.guide.prior.out.weight.grad.abs().sum() > 0 and m.guide.posterior.out.weight.grad.abs().sum() > 0
    a, b2 = samples(m, seed=0), samples(m, seed=1)
    assert torch.equal(a, b2) and torch.equal(a, a[:, :1].expand_as(a))


def test_no_guidance_has_no_guidance_parameters():
    full, none = make(GRAM, GRAM_CFG), make(GRAM, GRAM_CFG, guidance="none")
    assert none.num_params() < full.num_params()
    assert not any(k.startswith("guide.") for k in none.state_dict())


def test_looped_tf_with_guidance_is_stochastic_and_pays_kl():
    m = make(LoopedTF, LOOP_CFG, guidance="learned", beta=0.3).train()
    torch.nn.init.normal_(m.guide.posterior.out.weight, std=0.05)
    b = batch()
    loss, logs, _ = m.loss(b, m.initial_carry(b, CPU))
    assert float(logs["kl"]) > 0 and torch.isfinite(loss)
    m2 = make(LoopedTF, LOOP_CFG, guidance="learned", sigma_init=1.0)
    assert len({tuple(r.tolist()) for r in samples(m2)[0]}) > 1
    plain = make(LoopedTF, LOOP_CFG)
    assert not any(k.startswith("guide.") for k in plain.state_dict())


def test_trm_inference_ablations():
    base = samples(make(TRM, TRM_CFG))
    assert torch.equal(base, base[:, :1].expand_as(base))
    for knob in ({"decode": "sample"}, {"init": "random"}):
        out = samples(make(TRM, TRM_CFG, **knob))
        assert len({tuple(r.tolist()) for r in out[0]}) > 1, knob


def test_inference_knobs_do_not_change_training():
    a, b = make(TRM, TRM_CFG).train(), make(TRM, TRM_CFG, decode="sample", init="random").train()
    bt = batch()
    torch.manual_seed(1)
    la, _, _ = a.loss(bt, a.initial_carry(bt, CPU))
    torch.manual_seed(1)
    lb, _, _ = b.loss(bt, b.initial_carry(bt, CPU))
    assert torch.equal(la, lb)
    assert set(TRM.Config.inference_fields) == {"decode", "init"}


def test_fingerprint_hashes_only_non_default_fields(monkeypatch):
    cfg = resolve("nqueens", "gram", "smoke")
    before = cfg.fingerprint()
    # a new train knob with a default must not rename existing runs
    fields = [(f.name, f.type, f) for f in dataclasses.fields(TrainConfig)]
    New = dataclasses.make_dataclass("TrainConfig", fields + [("new_knob", int, dataclasses.field(default=3))],
                                     frozen=True)
    moved = dataclasses.replace(cfg, train=New(**dataclasses.asdict(cfg.train)))
    assert moved.fingerprint() == before
    assert dataclasses.replace(cfg, overrides={"model.hidden": 1}).fingerprint() == before  # recorded, not hashed
    assert resolve("nqueens", "gram", "smoke", {"model.hidden": 64}).fingerprint() != before


def test_overrides_are_recorded():
    cfg = resolve("nqueens", "gram", "cpu", {"model.guidance": "none", "eval.samples": 5}, seed=2)
    assert cfg.overrides == {"model.guidance": "none", "eval.samples": 5}
    assert cfg.to_dict()["overrides"] == cfg.overrides


def test_answer_ids_and_truncation_recompute_votes():
    keys = [b"a", b"b", b"b", b"c", b"a", b"a"]
    assert answer_ids(keys) == [0, 1, 1, 2, 0, 0]
    valid = np.array([[1, 0, 0, 1, 1, 1]])
    recs = example_records(np.array([7]), np.array([3]), [keys], {"valid": valid, "conflicts": 1 - valid},
                           np.array([[1, 0, 0, 0, 1, 1]]), {"lprm": np.array([[0.1, 0.9, 0.8, 0.2, 0.1, 0.1]])},
                           np.zeros((1, 6, 4), dtype=np.int64))
    r = recs[0]
    assert r["selected"]["vote"] == 0 and r["distinct_valid"] == 2  # "a" x3 wins over "b" x2
    t = truncate(r, 3)
    assert t["selected"]["vote"] == 1  # among the first 3: "b" twice
    assert t["valid"] == [1, 0, 0] and t["conflicts"] == [0, 1, 1] and t["distinct_valid"] == 1
    assert t["selected"]["lprm"] == 1 and t["distinct"] == 2
    assert summarize([t])["accuracy_vote"]["value"] == 0.0 and summarize([r])["accuracy_vote"]["value"] == 1.0
    assert truncate(r, 6) == r
    with pytest.raises(ValueError):
        truncate({k: v for k, v in r.items() if k != "answer_ids"}, 2)
    # schema-1 records of a model whose N samples are one answer need no ids
    same = {**{k: v for k, v in r.items() if k != "answer_ids"}, "distinct": 1, "valid": [1] * 6}
    assert truncate(same, 2)["valid"] == [1, 1] and truncate(same, 2)["selected"]["vote"] == 0


def test_variants_resolve_for_their_models():
    for v in VARIANTS:
        cfg = resolve("nqueens", v.model, "cpu", variant_sets(v, "nqueens", "cpu"))
        for k, val in v.eval_sets.items():
            assert k in type(cfg.model).inference_fields
        assert cfg.model_name == v.model
    deep = variant_sets(by_key("looped-deep-guidance"), "graph-coloring", "cpu")
    gram_n_sup = resolve("graph-coloring", "gram", "cpu").model.n_sup  # the rung takes GRAM's n_sup
    assert deep == {"model.guidance": "learned", "model.ce_reduce": "sum", "model.n_sup": gram_n_sup, "model.act": True}
    assert variant_sets(by_key("looped-guidance"), "nqueens", "cpu")["model.ce_reduce"] == "sum"  # Eq. 14
