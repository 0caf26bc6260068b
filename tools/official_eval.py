"""Re-implementation of the two official extractive-QA evaluation scripts.

* KorQuAD 1.0 (`KorQuAD_v1.0_evaluate.py`): normalisation = remove_ (a fixed
  list of quote/bracket characters -> space), lower(), drop every char of
  string.punctuation, whitespace collapse.  EM compares normalised strings,
  F1 is computed over the multiset of CHARACTERS of the whitespace tokens
  (i.e. spaces are ignored), 0 when nothing overlaps.
* SQuAD v1.1 (`evaluate-v1.1.py`): lower(), drop string.punctuation, replace
  the articles a/an/the (regex r'\b(a|an|the)\b', Python's Unicode-aware \b)
  by a space, whitespace collapse.  F1 over whitespace tokens, 0 when nothing
  overlaps.

Both: best score over the gold answers (metric_max_over_ground_truths),
averaged over every question of the dataset x 100; a question without a
prediction counts 0 (and is reported on stderr, as the scripts do).

Written from the published algorithm descriptions; the function names below
are this project's, not the scripts'.
"""
import re
import string
import sys
from collections import Counter

_PUNCT = set(string.punctuation)
# Characters that KorQuAD's remove_() replaces by a space, in its order.
KORQUAD_REMOVED = ["'", '"', "《", "》", "<", ">", "〈", "〉", "(", ")", "‘", "’"]
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _ws_fix(text):
    return " ".join(text.split())


def _remove_punc(text):
    return "".join(ch for ch in text if ch not in _PUNCT)


# ----------------------------------------------------------------- KorQuAD 1.0
def korquad_normalize(s):
    for ch in KORQUAD_REMOVED:
        s = s.replace(ch, " ")
    return _ws_fix(_remove_punc(s.lower()))


def korquad_em(prediction, ground_truth):
    return korquad_normalize(prediction) == korquad_normalize(ground_truth)


def korquad_f1(prediction, ground_truth):
    pred_chars = [c for tok in korquad_normalize(prediction).split() for c in tok]
    gold_chars = [c for tok in korquad_normalize(ground_truth).split() for c in tok]
    return _overlap_f1(pred_chars, gold_chars)


# ------------------------------------------------------------------ SQuAD v1.1
def squad_normalize(s):
    return _ws_fix(_ARTICLES.sub(" ", _remove_punc(s.lower())))


def squad_em(prediction, ground_truth):
    return squad_normalize(prediction) == squad_normalize(ground_truth)


def squad_f1(prediction, ground_truth):
    return _overlap_f1(squad_normalize(prediction).split(), squad_normalize(ground_truth).split())


# --------------------------------------------------------------------- shared
def _overlap_f1(pred, gold):
    """F1 of the multiset overlap of two unit lists (characters for KorQuAD, tokens for
    SQuAD), as both official scripts compute it."""
    common = Counter(pred) & Counter(gold)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred)
    recall = 1.0 * num_same / len(gold)
    return (2 * precision * recall) / (precision + recall)


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, gt) for gt in ground_truths)


METRICS = {
    "korquad": (korquad_em, korquad_f1),
    "squad": (squad_em, squad_f1),
}


def evaluate(dataset, predictions, metric="korquad", quiet=False):
    """`dataset` is the SQuAD json's "data" list; returns the scripts' dict."""
    em_fn, f1_fn = METRICS[metric]
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    if not quiet:
                        print(f"Unanswered question {qa['id']} will receive score 0.", file=sys.stderr)
                    continue
                ground_truths = [a["text"] for a in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact_match += metric_max_over_ground_truths(em_fn, prediction, ground_truths)
                f1 += metric_max_over_ground_truths(f1_fn, prediction, ground_truths)
    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total
    return {"exact_match": exact_match, "f1": f1}


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description="KorQuAD 1.0 / SQuAD 1.1 evaluation")
    ap.add_argument("dataset_file")
    ap.add_argument("prediction_file")
    ap.add_argument("--metric", choices=sorted(METRICS), default="korquad")
    args = ap.parse_args()
    with open(args.dataset_file, encoding="utf-8") as f:
        data = json.load(f)["data"]
    with open(args.prediction_file, encoding="utf-8") as f:
        preds = json.load(f)
    print(json.dumps(evaluate(data, preds, args.metric)))
