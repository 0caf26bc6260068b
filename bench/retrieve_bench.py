"""Retrieval speed on 2 cores: `pipeline retrieve` (tantivy BM25, bigram analyser) against the
Python anchor `bm25s` with the same tokens, in one session.

Corpus: KorQuAD 1.0 dev's distinct contexts, then copies of them with the characters of each
word shuffled (seeded) until there are N passages; queries: its 5,774 questions; k = 20.

    python bench/retrieve_bench.py --pipeline target/release/pipeline \
        --korquad ../shared/data/korquad/KorQuAD_v1.0_dev.json [--passages 60000]
"""

import argparse
import json
import random
import resource
import subprocess
import tempfile
import time
from pathlib import Path


def bigrams(text):
    out = []
    for w in text.lower().split():
        if len(w) == 1:
            out.append(w)
        out.extend(w[i : i + 2] for i in range(len(w) - 1))
    return out


def corpus(korquad, n):
    data = json.loads(Path(korquad).read_text(encoding="utf-8"))
    contexts, questions = [], []
    for a in data["data"]:
        for p in a["paragraphs"]:
            if p["context"] not in contexts:
                contexts.append(p["context"])
            questions.extend(q["question"] for q in p["qas"])
    rng = random.Random(0)
    docs = list(contexts)
    while len(docs) < n:
        words = []
        for w in contexts[len(docs) % len(contexts)].split():
            c = list(w)
            rng.shuffle(c)
            words.append("".join(c))
        docs.append(" ".join(words))
    return docs[:n], questions


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--korquad", required=True)
    ap.add_argument("--passages", type=int, default=60000)
    args = ap.parse_args()
    docs, questions = corpus(args.korquad, args.passages)
    tmp = Path(tempfile.mkdtemp())
    with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": str(i), "title": "", "text": d}, ensure_ascii=False) + "\n")

    # pipeline: index + search, its own timings from stderr, peak memory of the child.
    t = time.perf_counter()
    p = subprocess.run(
        [args.pipeline, "retrieve", "--corpus", str(tmp / "corpus.jsonl"), "--questions",
         args.korquad, "--out", str(tmp / "out"), "--top-k", "20"],
        capture_output=True, text=True, check=True,
    )
    wall = time.perf_counter() - t
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    line = [l for l in p.stderr.splitlines() if l.startswith("retrieve:")][0]
    index_s = float(line.split("indexed in ")[1].split(" s")[0])
    search_s = float(line.split("questions in ")[1].split(" s")[0])
    metrics = json.loads(p.stdout)

    import bm25s  # noqa: E402

    t = time.perf_counter()
    tokens = [bigrams(d) for d in docs]
    model = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    model.index(tokens, show_progress=False)
    py_index_s = time.perf_counter() - t
    t = time.perf_counter()
    q_tokens = [bigrams(q) for q in questions]
    model.retrieve(q_tokens, k=20, show_progress=False, n_threads=1)
    py_search_s = time.perf_counter() - t

    n = len(questions)
    print(json.dumps({
        "passages": len(docs),
        "questions": n,
        "pipeline": {"index_s": index_s, "search_s": search_s, "qps": n / search_s,
                     "wall_s": wall, "peak_mib": peak_mib,
                     "recall_1": metrics["recall"]["1"], "recall_20": metrics["recall"]["20"]},
        "bm25s": {"index_s": py_index_s, "search_s": py_search_s, "qps": n / py_search_s},
        "qps_ratio": (n / search_s) / (n / py_search_s),
    }, indent=1))


if __name__ == "__main__":
    main()
