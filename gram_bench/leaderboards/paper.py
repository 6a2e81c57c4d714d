"""The paper's reported numbers (REFERENCE.md section 4), labelled as the paper's in every
table. Typed in once here; gram-bench's own numbers always come from run records."""

from __future__ import annotations

SOURCE = "GRAM paper (arXiv:2605.19376), as transcribed in REFERENCE.md"

# Table 1: multi-solution CSPs. (model, column) -> (mean, spread)
MULTI_SOLUTION = {
    "direct": {"nq8_acc": (40.4, 1.1), "nq8_cov": (13.7, 1.1), "nq10_acc": (13.6, 0.5), "nq10_cov": (1.6, 0.2),
               "gc8_conf": (179.3, 4.0), "gc8_cov": (19.9, 0.2), "gc10_conf": (198.7, 5.0), "gc10_cov": (6.7, 0.1)},
    "looped-tf": {"nq8_acc": (68.4, 3.7), "nq8_cov": (23.6, 1.9), "nq10_acc": (50.0, 7.6), "nq10_cov": (6.2, 3.2),
                  "gc8_conf": (136.0, 16.1), "gc8_cov": (20.5, 1.5), "gc10_conf": (157.3, 9.0), "gc10_cov": (7.2, 0.7)},
    "hrm": {"nq8_acc": (78.7, 2.9), "nq8_cov": (26.7, 1.3), "nq10_acc": (37.4, 0.3), "nq10_cov": (4.7, 0.1),
            "gc8_conf": (109.7, 1.5), "gc8_cov": (21.8, 0.3), "gc10_conf": (164.3, 21.6), "gc10_cov": (8.9, 1.7)},
    "trm": {"nq8_acc": (66.8, 5.7), "nq8_cov": (36.1, 22.5), "nq10_acc": (17.5, 11.2), "nq10_cov": (2.0, 1.3),
            "gc8_conf": (109.3, 3.1), "gc8_cov": (22.3, 0.6), "gc10_conf": (170.7, 17.9), "gc10_cov": (6.8, 0.3)},
    "ar": {"nq8_acc": (96.3, 1.0), "nq8_cov": (84.8, 0.8), "nq10_acc": (90.0, 2.2), "nq10_cov": (53.2, 0.8),
           "gc8_conf": (19.0, 11.3), "gc8_cov": (83.0, 0.7), "gc10_conf": (61.3, 8.3), "gc10_cov": (40.0, 0.3)},
    "mdlm": {"nq8_acc": (96.1, 1.5), "nq8_cov": (87.2, 0.6), "nq10_acc": (74.3, 6.6), "nq10_cov": (47.4, 2.2),
             "gc8_conf": (2.7, 0.6), "gc8_cov": (84.5, 4.0), "gc10_conf": (12.0, 7.0), "gc10_cov": (48.2, 1.4)},
    "gram": {"nq8_acc": (99.7, 0.3), "nq8_cov": (90.3, 1.9), "nq10_acc": (89.7, 2.7), "nq10_cov": (57.5, 3.4),
             "gc8_conf": (2.7, 2.1), "gc8_cov": (85.8, 0.5), "gc10_conf": (3.3, 1.5), "gc10_cov": (51.3, 2.8)},
}
PARAMS = {"direct": "27M", "looped-tf": "7M", "hrm": "27M", "trm": "7M", "ar": "10.6M", "mdlm": "12.6M",
          "gram": "10M", "d3pm": "15.9M / 55.1M", "vae": "-"}

# Structured reasoning: test accuracy %.
STRUCTURED = {
    "hrm": {"sudoku": 55.0, "arc1": 40.3, "arc2": 5.0},
    "trm": {"sudoku": 87.4, "arc1": 44.6, "arc2": 7.8},
    "looped-tf": {"sudoku": 61.3},
    "direct": {"sudoku": 0.0, "arc1": 21.0, "arc2": 0.0},
    "gram": {"sudoku": 97.0, "arc1": 52.0, "arc2": 11.1},
}

# Ablations (5 samples): variant key -> (Sudoku, N-Queens) accuracy %.
ABLATION = {
    "gram": (93.96, 99.69), "no-guidance": (82.87, 72.91), "noise-only": (94.88, 50.27),
    "mean-only": (0.00, 0.00), "trm-stochastic-decoder": (82.87, 71.66), "trm-random-z0": (78.53, 71.82),
    "looped-tf": (61.25, 71.30), "looped-guidance": (65.64, 86.30), "looped-deep-guidance": (73.90, 100.00),
}

# Binarized MNIST: (IS, FID). GRAM by evaluation depth.
MNIST = {"vae": (1.70, 86.28), "d3pm": (1.86, 74.03), "trm": (1.00, 303.29),
         "gram@8": (1.85, 84.08), "gram@16": (1.89, 77.79), "gram@32": (1.91, 76.65),
         "gram@64": (1.95, 75.39), "gram@128": (1.99, 74.30), "gram@256": (2.04, 73.34)}

# Unconditional Sudoku generation: validity % over 100K boards.
SUDOKU_GEN = {"d3pm-uniform-big": 91.33, "d3pm-uniform-small": 29.24, "d3pm-absorbing-big": 79.18,
              "d3pm-absorbing-small": 21.88, "gram": 99.05}

# Sudoku width x depth scaling (figure, +-0.005): samples N -> {iterations: accuracy}.
SUDOKU_SCALING = {1: {8: 0.81, 16: 0.87, 32: 0.91}, 5: {8: 0.91, 16: 0.94, 32: 0.95},
                  20: {8: 0.95, 16: 0.97, 32: 0.97}, 50: {8: 0.96, 16: 0.97, 32: 0.98}}
