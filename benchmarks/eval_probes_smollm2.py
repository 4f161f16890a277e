"""Counterfactual template probes on the packaged SmolLM2-135M-Instruct (the documented
default templates, group terms and continuations of `shoestring.evaluate.probes`): per
continuation, the paired gap in log-probability between groups, largest first. Quality
figures only, no lock needed:

    nice -n 19 .venv/bin/python benchmarks/eval_probes_smollm2.py
"""

from __future__ import annotations


def main() -> None:
    import torch

    from shoestring.core.registry import get_stage
    from shoestring.evaluate.probes import probe_lm
    from shoestring.models import load_model, load_tokenizer

    cfg = get_stage("evaluate").config.model_validate({"model": "smollm2-135m-instruct"})
    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct", "causal-lm", dtype=torch.float32).eval()
    res = probe_lm(model, tok, cfg)
    print("| attribute | continuation | group means (nats) | difference [95% CI] | permutation p |")
    print("|---|---|---|---|---|")
    for attr, a in res["attributes"].items():
        for r in a["gaps"][:5]:
            d = r["difference"]
            means = ", ".join(f"{g} {v['value']:.2f}" for g, v in r["group_means"].items())
            print(f"| {attr} | {r['continuation']!r} | {means} | {d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | "
                  f"{r['p_value_permutation']:.3g} |")


if __name__ == "__main__":
    main()
