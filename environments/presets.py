"""Named reproductions for `rlm eval --preset`: which environments (with which options), which
modes and which run limits reproduce a published experiment, and the figures it published.

Published rewards are fractions in [0, 1] like ours (the paper prints percentages). They were
measured on the publishers' data and models, so they sit beside a run for scale, not as a target
our offline tasks must hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import rlm

_PAPER = "Zhang, Kraska, Khattab, Recursive Language Models, arXiv 2512.24601v1, Table 1"
_PAPER_GPT5 = f"{_PAPER}; GPT-5 (medium reasoning), sub-calls to GPT-5-mini"
_PAPER_QWEN = f"{_PAPER}; Qwen3-Coder-480B-A35B for root and sub-calls"
# The blog's plots are drawn by environments/plot_results.py from these CSVs on the branch the blog
# links (PrimeIntellect-ai/verifiers, sebastian/experiment/rlm); rows for GPT-5-mini.
_BLOG = "Prime Intellect, Recursive Language Models: the paradigm of 2026 (2026-01-01), 'Results across environments'"
_BLOG_MATH = (f"{_BLOG}; GPT-5-mini; PrimeIntellect-ai/verifiers environments/math_python/outputs/aggregate.csv "
              "@f31bd080 (correct_answer_mean, total_ms_mean, prompt+completion tokens; 100/150/100 rollouts)")
_BLOG_OOLONG = (f"{_BLOG}; GPT-5-mini; PrimeIntellect-ai/verifiers environments/oolong/outputs/aggregate.csv "
                "@07daa4a2 (judge_reward_mean etc., averaged over the synth, synth_with_labels and real subsets)")


@dataclass(frozen=True)
class Published:
    """One figure a paper or post published for an environment × mode: the mean reward, and
    where given the mean seconds, root-model tokens and dollars per rollout."""

    environment: str
    mode: rlm.Mode
    model: str
    reward: float
    source: str
    seconds: float | None = None
    root_tokens: float | None = None
    cost: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Preset:
    """Environments with their constructor options, modes, `RLMConfig` settings and the
    published figures of one experiment."""

    name: str
    description: str
    environments: dict[str, dict[str, Any]]
    modes: tuple[rlm.Mode, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    published: tuple[Published, ...] = ()


PRIME_BLOG = Preset(
    name="prime-blog",
    description="Prime Intellect's RLM ablation: four seed environments × llm / rlm / rlm+tips, "
                "REPL executions limited to 120 s and 8,192 characters of output",
    environments={
        "deepdive": {},
        "oolong": {},
        # the blog's default verbatim-copy settings
        "verbatim_copy": {"content_type": "all", "target_length": 500, "mean_fragment_length": 20},
        "math_python": {},
    },
    modes=("llm", "rlm", "rlm+tips"),
    settings={"exec_timeout": 120.0, "max_output_chars": 8192},
    published=(
        Published("math_python", "llm", "gpt-5-mini", 0.44, _BLOG_MATH, seconds=141.2, root_tokens=7671),
        Published("math_python", "rlm", "gpt-5-mini", 0.353, _BLOG_MATH, seconds=320.2, root_tokens=17445),
        Published("math_python", "rlm+tips", "gpt-5-mini", 0.36, _BLOG_MATH, seconds=251.2, root_tokens=18643),
        Published("oolong", "llm", "gpt-5-mini", 0.427, _BLOG_OOLONG, seconds=64.9, root_tokens=50402,
                  note="long inputs the API rejected count as reward 0 and no tokens"),
        Published("oolong", "rlm", "gpt-5-mini", 0.547, _BLOG_OOLONG, seconds=225.5, root_tokens=79217),
        Published("oolong", "rlm+tips", "gpt-5-mini", 0.507, _BLOG_OOLONG, seconds=357.3, root_tokens=51339),
    ),
)

# The paper reports no numbers for S-NIAH (only Figure 1's curves), so s_niah has no published row.
RLM_PAPER = Preset(
    name="rlm-paper",
    description="The RLM paper's five tasks: an RLM of recursion depth 1 against the base LLM",
    environments={
        "s_niah": {},
        "browsecomp_plus": {"documents": 1000},
        "oolong": {"context_tokens": 131_072},  # trec_coarse at 131K tokens
        "oolong_pairs": {"context_tokens": 32_768},  # 32K tokens
        "codeqa": {},
    },
    modes=("llm", "rlm"),
    settings={"max_depth": 1},
    published=(
        Published("codeqa", "llm", "gpt-5", 0.24, _PAPER_GPT5, cost=0.13, note="ran into the context limit"),
        Published("codeqa", "rlm", "gpt-5", 0.62, _PAPER_GPT5, cost=0.11),
        Published("browsecomp_plus", "llm", "gpt-5", 0.0, _PAPER_GPT5, note="ran into the context limit"),
        Published("browsecomp_plus", "rlm", "gpt-5", 0.9133, _PAPER_GPT5, cost=0.99),
        Published("oolong", "llm", "gpt-5", 0.44, _PAPER_GPT5, cost=0.14),
        Published("oolong", "rlm", "gpt-5", 0.565, _PAPER_GPT5, cost=0.43),
        Published("oolong_pairs", "llm", "gpt-5", 0.0004, _PAPER_GPT5, cost=0.16),
        Published("oolong_pairs", "rlm", "gpt-5", 0.58, _PAPER_GPT5, cost=0.33),
        Published("codeqa", "llm", "qwen3-coder-480b", 0.20, _PAPER_QWEN, cost=0.13, note="ran into the context limit"),
        Published("codeqa", "rlm", "qwen3-coder-480b", 0.56, _PAPER_QWEN, cost=0.92),
        Published("browsecomp_plus", "llm", "qwen3-coder-480b", 0.0, _PAPER_QWEN, note="ran into the context limit"),
        Published("browsecomp_plus", "rlm", "qwen3-coder-480b", 0.4466, _PAPER_QWEN, cost=0.84),
        Published("oolong", "llm", "qwen3-coder-480b", 0.36, _PAPER_QWEN, cost=0.06),
        Published("oolong", "rlm", "qwen3-coder-480b", 0.48, _PAPER_QWEN, cost=0.61),
        Published("oolong_pairs", "llm", "qwen3-coder-480b", 0.0006, _PAPER_QWEN, cost=0.05),
        Published("oolong_pairs", "rlm", "qwen3-coder-480b", 0.2311, _PAPER_QWEN, cost=1.02),
    ),
)

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (PRIME_BLOG, RLM_PAPER)}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise rlm.ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
