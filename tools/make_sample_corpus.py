"""Writes data/sample/corpus.json: a small open-domain corpus in KLUE's wiki format
({"0": {"text", "title", "document_id", ...}, ...}) for the retrieval tests: every distinct
context of the sample's train and test files, plus as many distractors (a context with the
characters of each word in a seeded random order, under another title: the same characters,
other bigrams).

    python3 tools/make_sample_corpus.py
"""

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def contexts():
    seen = []
    for name in ["train.json", "test.json"]:
        data = json.loads((ROOT / "data/sample" / name).read_text(encoding="utf-8"))
        for article in data["data"]:
            for para in article["paragraphs"]:
                if para["context"] not in [c for _, c in seen]:
                    seen.append((article["title"], para["context"]))
    return seen


def main():
    rng = random.Random(42)
    docs = contexts()
    out = {}
    for i, (title, text) in enumerate(docs):
        out[str(len(out))] = {"text": text, "title": title, "document_id": i, "corpus_source": "sample"}
    for i, (title, text) in enumerate(docs):
        words = []
        for w in text.split():
            chars = list(w)
            rng.shuffle(chars)
            words.append("".join(chars))
        out[str(len(out))] = {
            "text": " ".join(words),
            "title": f"{title} (distractor)",
            "document_id": len(docs) + i,
            "corpus_source": "distractor",
        }
    path = ROOT / "data/sample/corpus.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{path}: {len(out)} documents")


if __name__ == "__main__":
    main()
