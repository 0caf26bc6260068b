#!/usr/bin/env python3
"""Regenerate every reference fixture under tests/fixtures/.

Needs data/sample/{train,test}.json (tools/make_sample.py) and the venv of
tools/requirements.txt.  Deterministic: re-running gives identical files.
Reads /work/shared/data/korquad/KorQuAD_v1.0_dev.json (or $KORQUAD_DEV) for
the KorQuAD window fixtures; skipped with a message when the file is absent.
Those fixtures store no text: question ids, offsets, sequence ids, masks and
labels, and for input_ids only an FNV-1a 64 hash per window (byte-level BPE
ids are a lossless encoding of the text, and KorQuAD is CC BY-ND).  The hash:
h = 0xcbf29ce484222325; for each id, for each of its 4 little-endian bytes:
h ^= byte; h = h * 0x100000001b3 mod 2^64; written as 16 lowercase hex digits.
`--korquad-raw-ids` writes the raw ids instead, for local debugging only.

    .venv/bin/python tools/make_sample.py && .venv/bin/python tools/make_fixtures.py
"""
import collections
import hashlib
import json
import os
import random
import re
import shutil
import string
import sys
import warnings

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import official_eval as oe  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
SAMPLE = os.path.join(ROOT, "data", "sample")
KORQUAD = os.environ.get("KORQUAD_DEV", "/work/shared/data/korquad/KorQuAD_v1.0_dev.json")

WRITTEN = []  # (path, description)


def rel(p):
    return os.path.relpath(p, ROOT)


def write_json(path, obj, desc, indent=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if indent is None:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")
    WRITTEN.append((path, desc))


def load_squad(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def flatten(ds):
    """SQuAD json -> list of examples in document order."""
    out = []
    for art in ds["data"]:
        for para in art["paragraphs"]:
            for qa in para["qas"]:
                out.append({
                    "id": qa["id"],
                    "title": art.get("title", ""),
                    "context": para["context"],
                    "question": qa["question"],
                    "answers": qa["answers"],
                })
    return out


# =========================================================================
# a. tokenizers
# =========================================================================
EXTRA_ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "An answer is a span of the context; the model predicts its start and end.",
    "Question answering with BERT and RoBERTa style tokenizers, version 1.1.",
    "She said \"hello\" and left at 10:30 a.m. (not p.m.).",
]


def training_corpus(train, test):
    texts = []
    for ds in (train, test):
        for ex in flatten(ds):
            texts.append(ex["question"])
        for art in ds["data"]:
            for para in art["paragraphs"]:
                texts.append(para["context"])
    texts.extend(EXTRA_ENGLISH * 3)
    return texts


def train_wordpiece_vocab(tok, texts, vocab_size, specials):
    """Deterministic WordPiece vocabulary (BPE merges with a '##' prefix).

    This is what tokenizers' WordPieceTrainer does internally, but that
    trainer assigns ids to '##x' tokens in HashMap order, so tie-breaks (and
    the resulting vocab) change from process to process.  Here ties break on
    (count, then the lexicographically smallest pair), so reruns are
    byte-identical.  Words come from the tokenizer's own normalizer and
    pre-tokenizer.
    """
    counts = collections.Counter()
    for t in texts:
        norm = tok.normalizer.normalize_str(t)
        for w, _ in tok.pre_tokenizer.pre_tokenize_str(norm):
            counts[w] += 1
    words = {w: [w[0]] + ["##" + c for c in w[1:]] for w in counts}
    vocab = list(specials)
    seen = set(vocab)
    for sym in sorted({c for w in counts for c in w}) + sorted({"##" + c for w in counts for c in w[1:]}):
        if sym not in seen:
            seen.add(sym)
            vocab.append(sym)
    while len(vocab) < vocab_size:
        pairs = collections.Counter()
        for w, syms in words.items():
            c = counts[w]
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        new = best[0] + best[1][2:]
        for w, syms in words.items():
            if len(syms) < 2:
                continue
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == best[0] and syms[i + 1] == best[1]:
                    out.append(new)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out
        if new not in seen:
            seen.add(new)
            vocab.append(new)
    return {t: i for i, t in enumerate(vocab)}


def build_wordpiece(texts):
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = train_wordpiece_vocab(tok, texts, 1500, specials)
    tok.model = models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                 max_input_chars_per_word=100)
    tok.add_special_tokens(specials)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.no_padding()
    tok.no_truncation()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
        unk_token="[UNK]", mask_token="[MASK]", model_max_length=512, padding_side="right")


def build_bbpe(texts):
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(
        sep=("</s>", tok.token_to_id("</s>")), cls=("<s>", tok.token_to_id("<s>")),
        trim_offsets=True, add_prefix_space=False)
    tok.no_padding()
    tok.no_truncation()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>", model_max_length=512,
        padding_side="right", model_input_names=["input_ids", "attention_mask"])


def make_tokenizers(train, test):
    texts = training_corpus(train, test)
    out = {}
    for name, builder in (("wordpiece", build_wordpiece), ("bbpe", build_bbpe)):
        d = os.path.join(FIX, "tokenizers", name)
        if os.path.isdir(d):
            shutil.rmtree(d)
        tk = builder(texts)
        tk.save_pretrained(d)
        with open(os.path.join(d, "tokenizer.json"), encoding="utf-8") as f:
            tj = json.load(f)
        assert tj["padding"] is None and tj["truncation"] is None, "padding/truncation baked in"
        for fn in sorted(os.listdir(d)):
            WRITTEN.append((os.path.join(d, fn), f"{name} tokenizer export ({fn})"))
        # Reload from disk, exactly as a user of the export would.
        out[name] = PreTrainedTokenizerFast.from_pretrained(d)
        print(f"tokenizer {name}: vocab {out[name].backend_tokenizer.get_vocab_size()}")
    return out


# =========================================================================
# b/c. windows (run_qa.py prepare_train_features / prepare_validation_features)
# =========================================================================
def prepare_features(tokenizer, examples, max_len, stride):
    """Port of run_qa.py's two feature functions (pad_on_right=True)."""
    questions = [e["question"].lstrip() for e in examples]
    contexts = [e["context"] for e in examples]
    enc = tokenizer(questions, contexts, truncation="only_second", max_length=max_len, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    sample_mapping = enc["overflow_to_sample_mapping"]
    features = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        input_ids = enc["input_ids"][i]
        if tokenizer.cls_token_id in input_ids:
            cls_index = input_ids.index(tokenizer.cls_token_id)
        elif tokenizer.bos_token_id in input_ids:
            cls_index = input_ids.index(tokenizer.bos_token_id)
        else:
            cls_index = 0
        sequence_ids = enc.sequence_ids(i)
        sample_index = sample_mapping[i]
        answers = examples[sample_index]["answers"]
        if len(answers) == 0:
            start_pos = end_pos = cls_index
        else:
            start_char = answers[0]["answer_start"]
            end_char = start_char + len(answers[0]["text"])
            tsi = 0
            while sequence_ids[tsi] != 1:
                tsi += 1
            tei = len(input_ids) - 1
            while sequence_ids[tei] != 1:
                tei -= 1
            if not (offsets[tsi][0] <= start_char and offsets[tei][1] >= end_char):
                start_pos = end_pos = cls_index
            else:
                while tsi < len(offsets) and offsets[tsi][0] <= start_char:
                    tsi += 1
                start_pos = tsi - 1
                while offsets[tei][1] >= end_char:
                    tei -= 1
                end_pos = tei + 1
        feat = {"example_index": sample_index, "input_ids": input_ids,
                "attention_mask": enc["attention_mask"][i]}
        if "token_type_ids" in enc:
            feat["token_type_ids"] = enc["token_type_ids"][i]
        feat["offsets"] = [list(o) for o in offsets]
        feat["validation_offsets"] = [list(o) if sequence_ids[k] == 1 else None
                                      for k, o in enumerate(offsets)]
        feat["sequence_ids"] = sequence_ids
        feat["start_position"] = start_pos
        feat["end_position"] = end_pos
        features.append(feat)
    return features


def pick_window_examples(train_examples, n_longest_docs, n_total):
    """All questions of the longest contexts, then a spread of the rest."""
    by_ctx = collections.OrderedDict()
    for e in train_examples:
        by_ctx.setdefault(e["context"], []).append(e)
    longest = sorted(by_ctx, key=lambda c: (-len(c), by_ctx[c][0]["id"]))[:n_longest_docs]
    chosen = [e for c in longest for e in by_ctx[c]]
    ids = {e["id"] for e in chosen}
    rest = [e for e in train_examples if e["id"] not in ids]
    step = max(1, len(rest) // max(1, n_total - len(chosen)))
    for e in rest[::step]:
        if len(chosen) >= n_total:
            break
        chosen.append(e)
    return chosen[:n_total]


def window_fixture(tok_name, tokenizer, examples, max_len, stride):
    feats = prepare_features(tokenizer, examples, max_len, stride)
    return {
        "tokenizer": tok_name,
        "max_seq_length": max_len,
        "doc_stride": stride,
        "examples": [{"id": e["id"], "question": e["question"], "context": e["context"],
                      "answer_text": e["answers"][0]["text"],
                      "answer_start": e["answers"][0]["answer_start"]} for e in examples],
        "features": feats,
    }


def summarize_windows(name, fx):
    per_ex = collections.Counter(f["example_index"] for f in fx["features"])
    multi = sum(1 for v in per_ex.values() if v > 1)
    cls_lab = sum(1 for f in fx["features"] if f["start_position"] == 0)
    print(f"windows {name}: {len(fx['examples'])} examples -> {len(fx['features'])} features, "
          f"{multi} examples with 2+ windows (max {max(per_ex.values())}), {cls_lab} CLS-labelled")


def make_windows(tokenizers, train):
    ex = flatten(train)
    ex128 = [dict(e) for e in pick_window_examples(ex, 6, 40)]
    ex64 = [dict(e) for e in pick_window_examples(ex, 4, 15)]
    # Leading whitespace on a question must be stripped (run_qa lstrips).
    ex128[1]["question"] = "  \t" + ex128[1]["question"]
    ex64[2]["question"] = " " + ex64[2]["question"]
    for tok_name, tk in tokenizers.items():
        for suffix, exs, ml, st in (("", ex128, 128, 32), ("_64", ex64, 64, 16)):
            fx = window_fixture(tok_name, tk, exs, ml, st)
            if suffix:  # size: validation_offsets only in the 128-token files
                for f in fx["features"]:
                    del f["validation_offsets"]
            # sanity: labelled spans decode to something covering the answer
            for f in fx["features"]:
                if f["start_position"] != 0:
                    e = exs[f["example_index"]]
                    s = f["offsets"][f["start_position"]][0]
                    t = f["offsets"][f["end_position"]][1]
                    a0 = e["answers"][0]["answer_start"]
                    assert s <= a0 and t >= a0 + len(e["answers"][0]["text"]), (tok_name, e["id"])
            path = os.path.join(FIX, "windows", f"{tok_name}{suffix}.json")
            write_json(path, fx, f"run_qa features, {tok_name}, max_len {ml} stride {st}")
            summarize_windows(rel(path), fx)


KORQUAD_QUESTIONS = {"wordpiece": 150, "bbpe": 40}


def fnv1a64_ids(ids):
    """FNV-1a 64 over the ids as little-endian u32 bytes; lowercase hex."""
    h = 0xcbf29ce484222325
    for i in ids:
        for b in int(i).to_bytes(4, "little"):
            h ^= b
            h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def make_korquad_windows(tokenizers):
    if not os.path.exists(KORQUAD):
        print(f"SKIP korquad windows: {KORQUAD} not found")
        return
    with open(KORQUAD, "rb") as f:
        raw = f.read()
    sha = hashlib.sha256(raw).hexdigest()
    all_ex = flatten(json.loads(raw.decode("utf-8")))
    for tok_name, tk in tokenizers.items():
        # bbpe splits most unseen Hangul into 2-3 byte tokens, so the same
        # questions give ~3x the windows; fewer questions keep the file small.
        ex = all_ex[:KORQUAD_QUESTIONS[tok_name]]
        feats = prepare_features(tk, ex, 128, 32)
        out_feats = []
        for f in feats:
            del f["validation_offsets"]  # derivable from offsets + sequence_ids
            if not RAW_KORQUAD_IDS:
                # Byte-level ids decode back to the (CC BY-ND) text verbatim, so
                # only a hash of them is stored; see the module docstring.
                ids = f.pop("input_ids")
                head = {"example_index": f.pop("example_index"),
                        "input_ids_fnv1a64": fnv1a64_ids(ids),
                        "num_tokens": sum(f["attention_mask"])}
                f = {**head, **f}
            out_feats.append(f)
        feats = out_feats
        fx = {"tokenizer": tok_name, "source_sha256": sha, "max_seq_length": 128, "doc_stride": 32,
              "ids_encoding": "raw" if RAW_KORQUAD_IDS else "fnv1a64 over input_ids as little-endian u32",
              "examples": [{"id": e["id"]} for e in ex], "features": feats}
        path = os.path.join(FIX, "windows", f"korquad_{tok_name}.json")
        write_json(path, fx, f"run_qa features on the first {len(ex)} KorQuAD dev questions, "
                             f"{tok_name} (input_ids hashed, no text)")
        summarize_windows(rel(path), fx)


# =========================================================================
# d. metrics
# =========================================================================
EN_GOLDS = ["the Eiffel Tower", "An apple a day", "New York City", "Mr. Smith's car",
            "a theory of everything", "The Beatles", "U.S.A.", "rock 'n' roll", "Anne", "the"]
WRAPS = [("《", "》"), ("\"", "\""), ("'", "'"), ("<", ">"), ("〈", "〉"), ("(", ")"),
         ("‘", "’"), ("«", "»"), ("「", "」"), ("“", "”"), ("[", "]"), ("【", "】")]
PARTICLES = ["은", "는", "이", "가", "의", "을", "를", "에서", "으로"]
SPACES = ["\u00a0", "\u3000", "\t", "\n", "  ", "\u2009"]

HANDMADE_PAIRS = [
    ("", ["1861년"]),
    ("", ["the"]),
    ("《》", ["()"]),            # both normalise to "": EM 1, F1 0 (official quirk)
    ("the", ["a"]),               # squad: both normalise to "" -> EM 1, F1 0
    ("The the THE", ["an"]),
    ("the사과", ["사과"]),         # \b does not split Hangul from Latin letters
    ("(the) apple", ["apple"]),
    ("the-apple", ["apple"]),
    ("1,234명", ["1234명"]),
    ("１９９０년", ["1990년"]),
    ("İstanbul", ["istanbul"]),
    ("ΣΟΦΟΣ", ["σοφος"]),
    ("Ångström", ["angstrom"]),
    ("서울\u00a0특별시", ["서울 특별시"]),
    ("서울\u3000특별시", ["서울특별시"]),
    (" 서울 ", ["서울"]),
    ("…서울…", ["서울"]),
    ("서울·부산", ["서울 부산"]),
    ("~서울~", ["서울"]),
    ("김철수 씨", ["김철수", "철수"]),
    ("철수", ["김철수", "박철수 씨"]),
    ("가나다", ["다나가"]),        # korquad char F1 is 1.0 (multiset), EM 0
    ("aab", ["abb"]),
    ("A B C", ["abc"]),
    ("An Apple", ["apple", "an orange"]),
    ("U.S.A.", ["USA"]),
    ("rock 'n' roll", ["rock n roll"]),
    ("\"quoted\"", ["quoted"]),
    ("«quoted»", ["quoted"]),
    ("2019년 3월 1일", ["2019년", "3월 1일"]),
    ("1861", ["1861년"]),
    ("없는 답", ["전혀 다른 것"]),
]


def _transform(rng, gold, context, start):
    kind = rng.choice(["exact", "sub", "super", "particle", "wrap", "space", "case", "article",
                       "digits", "other", "punct_end", "multi"])
    g = gold
    if kind == "exact":
        return kind, g
    if kind == "sub":
        if len(g) <= 1:
            return kind, g
        return kind, g[:-1] if rng.random() < 0.5 else g[1:]
    if kind == "super":
        a = max(0, start - rng.randint(1, 8))
        b = min(len(context), start + len(g) + rng.randint(1, 8))
        return kind, context[a:b]
    if kind == "particle":
        return kind, g + rng.choice(PARTICLES)
    if kind == "wrap":
        l, r = rng.choice(WRAPS)
        return kind, l + g + r
    if kind == "space":
        sp = rng.choice(SPACES)
        if " " in g:
            return kind, g.replace(" ", sp, 1)
        i = rng.randint(1, max(1, len(g) - 1))
        return kind, sp + g[:i] + sp + g[i:] + sp
    if kind == "case":
        return kind, rng.choice([g.upper(), g.lower(), g.title(), g.swapcase()])
    if kind == "article":
        return kind, rng.choice(["the ", "The ", "a ", "an ", "THE "]) + g
    if kind == "digits":
        return kind, "".join(c for c in g if not c.isdigit()) + str(rng.randint(0, 99))
    if kind == "punct_end":
        return kind, g + rng.choice([".", ",", "!", "?", ";", ":", "...", "-", "~"])
    return kind, g  # "other"/"multi" handled by caller


def make_metrics(train, test):
    rng = random.Random(7)
    golds = []
    for ds in (train, test):
        for ex in flatten(ds):
            a = ex["answers"][0]
            golds.append((a["text"], ex["context"], a["answer_start"]))
    golds += [(g, g, 0) for g in EN_GOLDS]
    pairs = []
    for pred, gs in HANDMADE_PAIRS:
        pairs.append((pred, gs))
    while len(pairs) < 400:
        gold, ctx, st = rng.choice(golds)
        kind, pred = _transform(rng, gold, ctx, st)
        gs = [gold]
        if kind == "other":
            pred = rng.choice(golds)[0]
        elif kind == "multi":
            other = rng.choice(golds)[0]
            gs = [other, gold] if rng.random() < 0.5 else [gold, other, gold + "의"]
            _, pred = _transform(rng, gold, ctx, st)
        pairs.append((pred, gs))
    out = []
    for pred, gs in pairs:
        out.append({
            "prediction": pred,
            "golds": gs,
            "korquad": {"em": int(oe.metric_max_over_ground_truths(oe.korquad_em, pred, gs)),
                        "f1": float(oe.metric_max_over_ground_truths(oe.korquad_f1, pred, gs))},
            "squad": {"em": int(oe.metric_max_over_ground_truths(oe.squad_em, pred, gs)),
                      "f1": float(oe.metric_max_over_ground_truths(oe.squad_f1, pred, gs))},
        })
    # Cross-check SQuAD against transformers' copy of the algorithm.
    from transformers.data.metrics import squad_metrics as sm
    checked = 0
    for pred, gs in pairs:
        for g in gs:
            assert sm.compute_exact(g, pred) == int(oe.squad_em(pred, g))
            if sm.get_tokens(g) and sm.get_tokens(pred):
                assert abs(sm.compute_f1(g, pred) - oe.squad_f1(pred, g)) < 1e-12, (pred, g)
                checked += 1
    # Totals, as evaluate() would compute them with one question per pair.
    fake = [{"paragraphs": [{"qas": [{"id": str(i), "answers": [{"text": g} for g in gs]}
                                     for i, (_, gs) in enumerate(pairs)]}]}]
    preds = {str(i): p for i, (p, _) in enumerate(pairs)}
    totals = {}
    for m in ("korquad", "squad"):
        r = oe.evaluate(fake, preds, m)
        totals[m] = {"exact_match": r["exact_match"], "f1": r["f1"], "total": len(pairs)}
    write_json(os.path.join(FIX, "metrics.json"), {"pairs": out, "totals": totals},
               f"{len(pairs)} prediction/gold pairs scored with KorQuAD 1.0 and SQuAD 1.1", indent=1)
    print(f"metrics: {len(pairs)} pairs, squad F1 cross-checked on {checked} non-empty pairs; totals {totals}")


def alt_answer(t):
    """A second, shorter acceptable answer: "1861년" -> "1861", "475억 원" -> "475억"."""
    m = re.match(r"^([\d,]+)\D", t)
    if m:
        return m.group(1)
    if " " in t:
        return t.rsplit(" ", 1)[0]
    return t[:-1] if len(t) > 1 else t


def make_score(test):
    rng = random.Random(11)
    data = []
    n = 0
    for art in test["data"]:
        if n >= 30:
            break
        para = art["paragraphs"][0]
        qas = []
        for qa in para["qas"]:
            if n >= 30:
                break
            qa = json.loads(json.dumps(qa))
            if n in (3, 17):  # a second acceptable answer
                a = qa["answers"][0]
                qa["answers"].append({"text": alt_answer(a["text"]), "answer_start": a["answer_start"]})
            qas.append(qa)
            n += 1
        data.append({"title": art["title"], "paragraphs": [{"context": para["context"], "qas": qas}]})
    dataset = {"version": "KorQuAD_v1.0_synthetic", "data": data}
    preds = {}
    i = 0
    for art in data:
        ctx = art["paragraphs"][0]["context"]
        for qa in art["paragraphs"][0]["qas"]:
            a = qa["answers"][0]
            t, s = a["text"], a["answer_start"]
            mode = i % 8
            if i == 9:
                pass  # missing prediction
            elif mode in (0, 5):
                preds[qa["id"]] = t
            elif mode == 1:
                preds[qa["id"]] = t + "이다"
            elif mode == 2:
                preds[qa["id"]] = "《" + t + "》"
            elif mode == 3:
                preds[qa["id"]] = ctx[max(0, s - 6):s + len(t)]
            elif mode == 4:
                preds[qa["id"]] = ctx[s + len(t) + 1:s + len(t) + 9]
            elif mode == 6:
                preds[qa["id"]] = ""
            else:
                preds[qa["id"]] = t[: max(1, len(t) // 2)]
            i += 1
    expected = {}
    for m in ("korquad", "squad"):
        r = oe.evaluate(data, preds, m, quiet=True)
        expected[m] = {"exact_match": r["exact_match"], "f1": r["f1"], "total": n}
    d = os.path.join(FIX, "score")
    write_json(os.path.join(d, "dataset.json"), dataset, f"{n}-question SQuAD-format dataset for scoring", indent=1)
    write_json(os.path.join(d, "predictions.json"), preds, "predictions (one id missing)", indent=1)
    write_json(os.path.join(d, "expected.json"), expected, "official evaluate() output for both metrics", indent=1)
    print(f"score: {n} questions, {len(preds)} predictions, expected {expected}")


# =========================================================================
# e. decoding (utils_qa.postprocess_qa_predictions, v1 semantics)
# =========================================================================
def postprocess_qa_predictions(examples, features, all_start_logits, all_end_logits,
                               n_best_size=20, max_answer_length=30):
    """Port of utils_qa.postprocess_qa_predictions with version_2_with_negative=False."""
    features_per_example = collections.defaultdict(list)
    for i, f in enumerate(features):
        features_per_example[f["example_index"]].append(i)
    all_predictions = collections.OrderedDict()
    all_nbest = collections.OrderedDict()
    for example_index, example in enumerate(examples):
        prelim = []
        for fi in features_per_example[example_index]:
            start_logits = all_start_logits[fi]
            end_logits = all_end_logits[fi]
            offset_mapping = features[fi]["offsets"]
            start_indexes = np.argsort(start_logits)[-1:-n_best_size - 1:-1].tolist()
            end_indexes = np.argsort(end_logits)[-1:-n_best_size - 1:-1].tolist()
            for si in start_indexes:
                for ei in end_indexes:
                    if (si >= len(offset_mapping) or ei >= len(offset_mapping)
                            or offset_mapping[si] is None or offset_mapping[ei] is None):
                        continue
                    if ei < si or ei - si + 1 > max_answer_length:
                        continue
                    prelim.append({"offsets": (offset_mapping[si][0], offset_mapping[ei][1]),
                                   "score": start_logits[si] + end_logits[ei],
                                   "start_logit": start_logits[si], "end_logit": end_logits[ei]})
        predictions = sorted(prelim, key=lambda x: x["score"], reverse=True)[:n_best_size]
        context = example["context"]
        for pred in predictions:
            o = pred.pop("offsets")
            pred["text"] = context[o[0]:o[1]]
        if len(predictions) == 0 or (len(predictions) == 1 and predictions[0]["text"] == ""):
            predictions.insert(0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0, "score": 0.0})
        scores = np.array([pred.pop("score") for pred in predictions])
        exp_scores = np.exp(scores - np.max(scores))
        probs = exp_scores / exp_scores.sum()
        for prob, pred in zip(probs, predictions):
            pred["probability"] = prob
        all_predictions[example["id"]] = predictions[0]["text"]
        all_nbest[example["id"]] = [
            {k: (float(v) if isinstance(v, (np.float16, np.float32, np.float64, float)) else v)
             for k, v in p.items()} for p in predictions]
    return all_predictions, all_nbest


def make_decode(tokenizers, train, test):
    tk = tokenizers["wordpiece"]
    rng = np.random.default_rng(1234)
    # the 25 sample questions with the shortest contexts (keeps the file small)
    pool = flatten(train) + flatten(test)
    exs = sorted(pool, key=lambda e: (len(e["context"]), e["id"]))[:25]
    # Hand-made 1: short context, every top start/end logit outside the context.
    exs.append({"id": "hand-empty", "context": "짧은 문맥이다.", "question": "무엇인가?",
                "answers": [{"text": "짧은", "answer_start": 0}]})
    # Hand-made 2: the shortest test context giving 3+ windows; best span planted in window 2.
    longest = None
    for e in sorted(flatten(test), key=lambda e: (len(e["context"]), e["id"])):
        if len(prepare_features(tk, [e], 64, 16)) >= 3:
            longest = e
            break
    exs.append(dict(longest, id="hand-second-window"))
    feats = prepare_features(tk, exs, 64, 16)
    starts, ends = [], []
    for f in feats:
        st = (rng.standard_normal(64) * 3).astype(np.float32)
        en = (rng.standard_normal(64) * 3).astype(np.float32)
        starts.append(st)
        ends.append(en)
    n = len(exs)
    empty_feats = [i for i, f in enumerate(feats) if f["example_index"] == n - 2]
    for i in empty_feats:
        outside = np.array([o is None for o in feats[i]["validation_offsets"]])
        assert outside.sum() >= 20
        starts[i][outside] += np.float32(20.0)
        ends[i][outside] += np.float32(20.0)
    second = [i for i, f in enumerate(feats) if f["example_index"] == n - 1]
    assert len(second) >= 3, "hand-made multi-window example needs 3+ windows"
    for i in second:
        starts[i] = (starts[i] / np.float32(3)).astype(np.float32)
        ends[i] = (ends[i] / np.float32(3)).astype(np.float32)
    w2 = second[1]
    ctx_pos = [k for k, o in enumerate(feats[w2]["validation_offsets"]) if o is not None]
    s_tok = ctx_pos[len(ctx_pos) - 10]
    starts[w2][s_tok] = np.float32(9.5)
    ends[w2][s_tok + 3] = np.float32(8.25)
    preds, nbest = postprocess_qa_predictions(exs, [{"example_index": f["example_index"],
                                                     "offsets": f["validation_offsets"]} for f in feats],
                                              starts, ends)
    assert preds["hand-empty"] == "empty"
    o = feats[w2]["validation_offsets"]
    assert preds["hand-second-window"] == longest["context"][o[s_tok][0]:o[s_tok + 3][1]]
    # no exact score ties among the kept n-best (so ordering is unambiguous)
    for k, lst in nbest.items():
        sc = [np.float32(p["start_logit"]) + np.float32(p["end_logit"]) for p in lst]
        assert len(set(sc)) == len(sc) or k == "hand-empty", k
    fx = {
        "n_best_size": 20, "max_answer_length": 30, "max_seq_length": 64, "doc_stride": 16,
        "tokenizer": "wordpiece",
        "examples": [{"id": e["id"], "context": e["context"]} for e in exs],
        "features": [{"example_index": f["example_index"],
                      "start_logits": [float(x) for x in starts[i]],
                      "end_logits": [float(x) for x in ends[i]],
                      "offsets": f["validation_offsets"]} for i, f in enumerate(feats)],
        "predictions": preds,
        "nbest": nbest,
    }
    write_json(os.path.join(FIX, "decode.json"), fx,
               f"postprocess_qa_predictions port: {len(exs)} examples, {len(feats)} features, float32 logits")
    print(f"decode: {len(exs)} examples, {len(feats)} features")


# =========================================================================
# f. input formats
# =========================================================================
def make_inputs(train):
    import datasets
    datasets.disable_progress_bars()
    d = os.path.join(FIX, "inputs")
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(os.path.join(d, "bad"))
    exs = [json.loads(json.dumps(e)) for e in flatten(train)[:12]]
    two = [k for k, e in enumerate(exs) if e["answers"][0]["text"][0].isdigit()][:2]
    assert len(two) == 2
    for k in two:  # two questions with 2 acceptable answers
        a = exs[k]["answers"][0]
        exs[k]["answers"].append({"text": alt_answer(a["text"]), "answer_start": a["answer_start"]})
    # SQuAD layout
    data = []
    for e in exs:
        if not data or data[-1]["title"] != e["title"]:
            data.append({"title": e["title"], "paragraphs": [{"context": e["context"], "qas": []}]})
        data[-1]["paragraphs"][0]["qas"].append({"id": e["id"], "question": e["question"],
                                                 "answers": e["answers"]})
    write_json(os.path.join(d, "squad.json"), {"version": "synthetic_ko_v1.0", "data": data},
               "12 questions, SQuAD layout", indent=1)
    rows = {"id": [e["id"] for e in exs], "title": [e["title"] for e in exs],
            "context": [e["context"] for e in exs], "question": [e["question"] for e in exs],
            "answers": [{"text": [a["text"] for a in e["answers"]],
                         "answer_start": [a["answer_start"] for a in e["answers"]]} for e in exs]}
    features = datasets.Features({
        "id": datasets.Value("string"), "title": datasets.Value("string"),
        "context": datasets.Value("string"), "question": datasets.Value("string"),
        "answers": {"text": datasets.Sequence(datasets.Value("string")),
                    "answer_start": datasets.Sequence(datasets.Value("int32"))},
    })
    ds = datasets.Dataset.from_dict(rows, features=features)
    ds.to_json(os.path.join(d, "data.jsonl"))
    WRITTEN.append((os.path.join(d, "data.jsonl"), "Dataset.to_json export (JSON lines)"))
    ds.to_parquet(os.path.join(d, "data.parquet"))
    WRITTEN.append((os.path.join(d, "data.parquet"), "Dataset.to_parquet export (answers = struct of lists)"))
    ds.save_to_disk(os.path.join(d, "hf_disk"))
    for fn in sorted(os.listdir(os.path.join(d, "hf_disk"))):
        WRITTEN.append((os.path.join(d, "hf_disk", fn), "Dataset.save_to_disk folder"))
    ds.remove_columns(["answers"]).to_json(os.path.join(d, "test_noanswers.jsonl"))
    WRITTEN.append((os.path.join(d, "test_noanswers.jsonl"), "Dataset.to_json export without answers"))
    import csv
    with open(os.path.join(d, "data.csv"), "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "context", "question", "answers"])
        for i in range(len(exs)):
            w.writerow([rows["id"][i], rows["title"][i], rows["context"][i], rows["question"][i],
                        json.dumps(rows["answers"][i], ensure_ascii=False)])
    WRITTEN.append((os.path.join(d, "data.csv"), "CSV, answers column is a JSON string"))
    # ---- broken files
    b = os.path.join(d, "bad")
    dup = json.loads(json.dumps({"version": "synthetic_ko_v1.0", "data": data[:2]}))
    dup["data"][1]["paragraphs"][0]["qas"][0]["id"] = dup["data"][0]["paragraphs"][0]["qas"][0]["id"]
    write_json(os.path.join(b, "dup_ids.json"), dup, "bad: two questions share an id", indent=1)

    def jsonl(path, objs, desc):
        with open(path, "w", encoding="utf-8") as f:
            for o in objs:
                f.write(json.dumps(o, ensure_ascii=False) + "\n")
        WRITTEN.append((path, desc))
    flat_rows = [{k: rows[k][i] for k in rows} for i in range(5)]
    er = json.loads(json.dumps(flat_rows))
    er[2]["question"] = ""
    jsonl(os.path.join(b, "empty_question.jsonl"), er, "bad: line 3 (1-based) has an empty question")
    mf = json.loads(json.dumps(flat_rows))
    del mf[1]["context"]
    jsonl(os.path.join(b, "missing_field.jsonl"), mf, "bad: line 2 (1-based) has no context field")
    # shifted.json: one repairable offset (+2), one answer whose text is not in the context
    sh = json.loads(json.dumps({"version": "synthetic_ko_v1.0", "data": data[:2]}))
    ctx0 = sh["data"][0]["paragraphs"][0]["context"]
    fixed = None
    for qa in sh["data"][0]["paragraphs"][0]["qas"]:
        a = qa["answers"][0]
        if ctx0.count(a["text"]) == 1:
            a["answer_start"] += 2
            fixed = qa["id"]
            break
    assert fixed is not None
    qa_bad = sh["data"][1]["paragraphs"][0]["qas"][0]
    qa_bad["answers"] = [{"text": "존재하지 않는 답변", "answer_start": 5}]
    assert "존재하지 않는 답변" not in sh["data"][1]["paragraphs"][0]["context"]
    sh["note"] = (f"{fixed}: answer_start is +2 too far (text occurs once, repairable); "
                  f"{qa_bad['id']}: answer text not in context (drop)")
    write_json(os.path.join(b, "shifted.json"), sh, "bad: one shifted answer_start, one answer not in context",
               indent=1)
    print(f"inputs: {len(exs)} questions; shifted.json: repairable {fixed}, unrepairable {qa_bad['id']}")


RAW_KORQUAD_IDS = "--korquad-raw-ids" in sys.argv  # local debugging only: never commit that output


def main():
    train = load_squad(os.path.join(SAMPLE, "train.json"))
    test = load_squad(os.path.join(SAMPLE, "test.json"))
    tokenizers = make_tokenizers(train, test)
    make_windows(tokenizers, train)
    make_korquad_windows(tokenizers)
    make_metrics(train, test)
    make_score(test)
    make_decode(tokenizers, train, test)
    make_inputs(train)
    print()
    total = 0
    for path, desc in WRITTEN:
        sz = os.path.getsize(path)
        total += sz
        print(f"{sz:>9}  {rel(path)}  - {desc}")
    print(f"{total:>9}  total")


if __name__ == "__main__":
    main()
