"""Named ablation variants (REFERENCE.md section 4, "Ablations"): a model plus overrides.

Pure data, shared by `gram-bench ablation` (which runs them) and the `ablation` table
(which finds their runs). A value `$model.field` means that field of `model` in the same
task and profile (e.g. GRAM's n_sup). A variant's `train_sets` change training, so it is its own run;
its `eval_sets` are inference-only (`gram-bench eval --set`), so it reuses the run of the
same model without them and adds an eval file."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    model: str
    group: str  # mechanism | architecture
    train_sets: dict = field(default_factory=dict)
    eval_sets: dict = field(default_factory=dict)


ABLATION_SAMPLES = 5  # the paper's ablation table uses 5 samples
ABLATION_METRIC = "accuracy_vote"

VARIANTS = [
    Variant("gram", "GRAM (full)", "gram", "mechanism"),
    Variant("no-guidance", "without stochastic guidance", "gram", "mechanism", {"guidance": "none"}),
    Variant("noise-only", "noise only, eps ~ N(0, sigma^2)", "gram", "mechanism", {"guidance": "noise"}),
    Variant("mean-only", "learned mean, zero variance", "gram", "mechanism", {"guidance": "mean"}),
    Variant("trm-stochastic-decoder", "TRM with a stochastic decoder", "trm", "mechanism",
            eval_sets={"decode": "sample"}),
    Variant("trm-random-z0", "TRM with a random z0 per inference", "trm", "mechanism", eval_sets={"init": "random"}),
    Variant("looped-tf", "Looped TF (base)", "looped-tf", "architecture"),
    # the guidance rungs take GRAM's CE reduction in the same profile, so their latent is
    # trained under the same loss balance as GRAM's (the cpu profile sums CE on graph coloring)
    Variant("looped-guidance", "+ stochastic guidance", "looped-tf", "architecture",
            {"guidance": "learned", "ce_reduce": "$gram.ce_reduce"}),
    Variant("looped-deep-guidance", "+ deep supervision + guidance", "looped-tf", "architecture",
            {"guidance": "learned", "ce_reduce": "$gram.ce_reduce", "n_sup": "$gram.n_sup", "act": True}),
    Variant("gram-ladder", "+ hierarchy (= GRAM)", "gram", "architecture"),
]

def by_key(key: str) -> Variant:
    for v in VARIANTS:
        if v.key == key:
            return v
    raise KeyError(key)
