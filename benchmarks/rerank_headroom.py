"""How much an embedding re-ranker can gain on emoji-open, and why it does not: diagnostics on the validation
embeddings of a run trained with ``holdout_labels`` (pairs and fits use only the held-out train labels).

    .venv/bin/python benchmarks/rerank_headroom.py --run runs/<run trained with holdout_labels=0.2> [--record]

Prints: the base CMC@1 and CMC@20 (the ceiling of re-ordering each top 20); a diagnostic bound that reads the
`style` column (the same search with the query's own drawing style removed from its candidates: the protocol does
not do that, and neither may a re-ranker, but it measures how much of the error is same-style confusion); how well a
linear probe fitted on the held-out labels predicts the style of validation images from their embeddings (if style
were a direction of the embedding, a pairwise model could learn to discount it); linear metric corrections fitted on
the held-out labels (within-label whitening, KISSME on the mined pairs); and the embedding pairwise MLP of
``lookalike train-pairwise`` validated after every epoch, at several capacities and regularisations.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SECTION = "## Re-ranking headroom on emoji-open (why the embedding re-rankers do not help)"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def similarities(e: np.ndarray) -> np.ndarray:
    s = unit(e) @ unit(e).T
    np.fill_diagonal(s, -np.inf)
    return s


def cmc(s: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k > 1 else s.argmax(1)[:, None]
    return float((labels[top] == labels[:, None]).any(1).mean())


def within_label_whitening(e: np.ndarray, labels: np.ndarray, shrink: float) -> np.ndarray:
    """W with W^T S_w W = I for the (shrunk) within-label covariance S_w of ``e``."""
    e = unit(e)
    means = {lab: e[labels == lab].mean(0) for lab in np.unique(labels)}
    r = e - np.stack([means[lab] for lab in labels])
    cov = r.T @ r / len(e)
    cov = (1 - shrink) * cov + shrink * np.trace(cov) / len(cov) * np.eye(len(cov))
    w, v = np.linalg.eigh(cov)
    return v @ np.diag(w ** -0.5) @ v.T


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True, help="a lookalike train run trained with holdout_labels")
    parser.add_argument("--record", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    import torch

    from lookalike.pipelines.pairwise import (_extractor_config, embed_splits, load_pairwise_config, mine_pairs,
                                              recorded_held_out, train_pairwise)

    cfg, _ = load_pairwise_config({"extractor_run": args.run})
    splits = embed_splits(_extractor_config(cfg), 256, "holdout", recorded_held_out(args.run))
    held, val = splits["train"], splits["validation"]
    if "style" not in val["table"].columns:
        raise SystemExit("this diagnostic reads the `style` column of emoji-open")
    ev, lv, sv = val["embeddings"].astype(np.float64), val["labels"], val["table"]["style"].to_numpy()
    eh, lh, sh = held["embeddings"].astype(np.float64), held["labels"], held["table"]["style"].to_numpy()
    lines = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    s = similarities(ev)
    say(f"- validation: {len(lv)} queries of {len(set(lv))} labels; held-out train labels the fits use: "
        f"{len(set(lh))} labels, {len(lh)} images")
    say(f"- base CMC@1 **{cmc(s, lv):.4f}**, CMC@5 {cmc(s, lv, 5):.4f}, CMC@20 {cmc(s, lv, 20):.4f} (the ceiling "
        "of re-ordering the top 20)")
    top = s.argmax(1)
    wrong = lv[top] != lv
    same_style = np.mean(sv[top][wrong] == sv[wrong])
    s_bound = np.where(sv[:, None] == sv[None, :], -np.inf, s)
    say(f"- top-1 mistakes that are an image of the query's own style: {same_style:.0%} (a random image of the split "
        f"has it {np.mean([np.mean(sv == x) for x in np.unique(sv)]):.0%} of the time); diagnostic bound with "
        f"same-style candidates removed (reads the style column, not a re-ranker): CMC@1 {cmc(s_bound, lv):.4f}")

    styles = sorted(set(sv) | set(sh))
    xh = torch.tensor(unit(eh), dtype=torch.float32) * 10
    yh = torch.tensor([styles.index(x) for x in sh])
    xv = torch.tensor(unit(ev), dtype=torch.float32) * 10
    yv = torch.tensor([styles.index(x) for x in sv])
    probe = torch.nn.Linear(xh.shape[1], len(styles))
    opt = torch.optim.Adam(probe.parameters(), 1e-2, weight_decay=1e-4)
    torch.manual_seed(0)
    for _ in range(500):
        loss = torch.nn.functional.cross_entropy(probe(xh), yh)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        fit, test = (probe(xh).argmax(1) == yh).float().mean(), (probe(xv).argmax(1) == yv).float().mean()
    say(f"- linear probe of the style (fitted on the held-out labels): {fit:.2f} on them, **{test:.2f}** on the "
        f"validation labels (chance {1 / len(styles):.2f}): style is not a direction of the embedding that carries "
        "over to new labels")

    for shrink in (0.1, 0.5, 0.9):
        w = within_label_whitening(eh, lh, shrink)
        say(f"- within-label whitening fitted on the held-out labels (shrinkage {shrink}): CMC@1 "
            f"{cmc(similarities(unit(ev) @ w), lv):.4f}")

    a, b, same = mine_pairs(eh, lh, 20, 10)
    a, b, same = a.numpy(), b.numpy(), same.numpy().astype(bool)
    uh, uv = unit(eh), unit(ev)
    rank = np.argsort(-s, axis=1)[:, :20]
    for shrink in (0.3, 0.6):
        def cov(d):
            c = d.T @ d / len(d)
            return (1 - shrink) * c + shrink * np.trace(c) / len(c) * np.eye(len(c))
        m = np.linalg.inv(cov(uh[a[same]] - uh[b[same]])) - np.linalg.inv(cov(uh[a[~same]] - uh[b[~same]]))
        diff = uv[:, None, :] - uv[rank]
        score = np.einsum("qnd,de,qne->qn", diff, m, diff)  # KISSME distance, smaller = same
        best = rank[np.arange(len(rank)), score.argmin(1)]
        say(f"- KISSME (pairs mined from the held-out labels, shrinkage {shrink}) re-ranking the top 20: CMC@1 "
            f"{float(np.mean(lv[best] == lv)):.4f}")

    settings = [("hidden 64, dropout 0.1, weight decay 1e-5 (bench_rerank's)", [64], 0.1, 1e-5, 10),
                ("hidden 64, dropout 0.5, weight decay 1e-2", [64], 0.5, 1e-2, 10),
                ("hidden 256, dropout 0.5, weight decay 1e-2, 30 negatives per item", [256], 0.5, 1e-2, 30)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, hidden, dropout, decay, negatives in settings:
            run = train_pairwise({
                "extractor_run": args.run, "logger": None, "output_dir": tmp, "blend": 0.5, "top_n": 20,
                "max_epochs": 20, "valid_period": 2, "n_negatives": negatives, "mine_top_n": negatives + 10,
                "pairwise_model": {"name": "embedding_mlp",
                                   "args": {"hidden_dims": hidden, "dropout": dropout, "residual": True}},
                "optimizer": {"name": "adamw", "args": {"lr": 1e-3, "weight_decay": decay}}}, splits=splits)
            import json

            history = json.loads((run["run_dir"] / "history.json").read_text())
            curve = ", ".join(f"{int(e) + 1}: {v['val']['OVERALL/cmc/1']:.3f}" for e, v in history.items()
                              if "val" in v)
            say(f"- embedding MLP, {name}, blend 0.5, top 20; CMC@1 after epochs {curve}")
    if args.record:
        sys.path.insert(0, str(HERE))
        from results_md import write_section

        text = (f"{SECTION}\n\nCommand: `.venv/bin/python benchmarks/rerank_headroom.py --run <run trained with "
                "holdout_labels=0.2> --record` (the `small_images_pretrained` recipe with `holdout_labels=0.2`; "
                "validation split of emoji-open, exact search).\n\n" + "\n".join(lines) + "\n")
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
