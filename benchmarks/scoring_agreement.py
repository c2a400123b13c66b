"""Measure how often priorscope's scorer agrees with VLMEvalKit's rule-based scoring.

Replies come from tests/real_style_outputs.py (phrasing classes seen in public answer files of
LLaVA-style models), the reference from priorscope.engine.data.vlmevalkit (a faithful
re-implementation of VLMEvalKit's can_infer, YOrN_Extraction and VQA metrics). For each mix
(``realistic``: classes weighted as models prompted the VLMEvalKit way reply; ``stress``: every
class equally often) it prints agreement overall, by kind and for every phrasing class with a
disagreement (with examples), for priorscope's own scorer and for ``--scorer vlmevalkit``
(the same replies through ``scoring.score``), and writes benchmarks/results/scoring_agreement.json.

    python benchmarks/scoring_agreement.py             # 20,000 replies per mix, seed 0
    python benchmarks/scoring_agreement.py --n 2000    # quicker
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the reference and the generator live with the tests

from agreement import Tally, judge, tally  # noqa: E402
from real_style_outputs import generate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scoring_agreement.json"


def run(n: int, seed: int, mix: str, scorer: str = "priorscope") -> Tally:
    """Return the agreement tally of ``n`` replies of one mix read by ``scorer``."""
    return tally([judge(case, scorer) for case in generate(n, seed=seed, mix=mix)])


def as_json(t: Tally) -> dict[str, object]:
    """Return a tally as JSON-ready data: rates by kind and by disagreeing phrasing class."""
    assert t.by_kind is not None and t.by_kind_agree is not None and t.examples is not None
    assert t.by_class is not None and t.by_class_agree is not None
    classes = []
    for (kind, phrasing), count in sorted(t.by_class.items()):
        agree = t.by_class_agree[(kind, phrasing)]
        classes.append(
            {
                "kind": kind,
                "phrasing": phrasing,
                "n": count,
                "agree": agree,
                "rate": agree / count,
                "disagreements": [
                    {"reply": v.case.reply, "priorscope": v.ours, "vlmevalkit": v.theirs}
                    for v in t.examples.get((kind, phrasing), [])
                ],
            }
        )
    return {
        "n": t.n,
        "agree": t.agree,
        "rate": t.rate,
        "same_score": t.same_score,
        "same_score_rate": t.score_rate,
        "by_kind": {k: t.by_kind_agree[k] / t.by_kind[k] for k in sorted(t.by_kind)},
        "classes": classes,
    }


def print_table(mix: str, t: Tally, scorer: str = "priorscope") -> None:
    """Print agreement by kind and every class with a disagreement."""
    assert t.by_kind is not None and t.by_kind_agree is not None and t.examples is not None
    assert t.by_class is not None and t.by_class_agree is not None
    print(
        f"\n== {mix} mix, --scorer {scorer}: {t.agree}/{t.n} read alike ({100 * t.rate:.2f}%); "
        f"{t.same_score}/{t.n} scored alike ({100 * t.score_rate:.2f}%)"
    )
    print(f"{'kind':<18}{'n':>7}{'agree':>9}")
    for kind in sorted(t.by_kind):
        print(
            f"{kind:<18}{t.by_kind[kind]:>7}{100 * t.by_kind_agree[kind] / t.by_kind[kind]:>8.2f}%"
        )
    print(f"\n{'disagreeing class':<52}{'n':>6}{'agree':>9}  example (priorscope | vlmevalkit)")
    for key, count in sorted(t.by_class.items()):
        agree = t.by_class_agree[key]
        if agree == count:
            continue
        first = t.examples[key][0]
        reply = first.case.reply.replace("\n", "\\n")[:48]
        label = f"{key[0]}: {key[1]}"
        print(
            f"{label:<52}{count:>6}{100 * agree / count:>8.1f}%  {reply!r} -> "
            f"{first.ours} | {first.theirs}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="Replies per mix.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out: dict[str, object] = {
        "benchmark": "scoring_agreement",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "command": " ".join(["python", *sys.argv]),
        "seed": args.seed,
    }
    for mix in ("realistic", "stress"):
        result = run(args.n, args.seed, mix)
        print_table(mix, result)
        out[mix] = as_json(result)
    # --scorer vlmevalkit: the same replies through scoring.score with VLMEvalKit's rules.
    theirs: dict[str, object] = {}
    for mix in ("realistic", "stress"):
        result = run(args.n, args.seed, mix, "vlmevalkit")
        print_table(mix, result, "vlmevalkit")
        theirs[mix] = as_json(result)
    out["vlmevalkit_scorer"] = theirs
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"\nWrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
