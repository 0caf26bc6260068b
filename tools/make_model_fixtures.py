#!/usr/bin/env python3
"""Reference fixtures for the model, heads, losses, optimizers, schedules and clipping.

Writes tests/fixtures/models/ (tiny random checkpoints + reference logits) and
tests/fixtures/train/ (BiLSTM head, losses, optimizers, lr schedules, clipping).
Needs the venv of tools/requirements.txt (torch, adamp, transformers) and the
tokenizer fixtures written by tools/make_fixtures.py.  Never loads pretrained
weights: every model is built from a config with a fixed seed.

Deterministic (fixed seeds, torch.use_deterministic_algorithms, one CPU thread,
float32): re-running gives byte-identical files.

    .venv/bin/python tools/make_model_fixtures.py
"""
import json
import math
import os
import shutil
import sys
import warnings

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import (AutoTokenizer, BertConfig, BertForQuestionAnswering,  # noqa: E402
                          RobertaConfig, RobertaForQuestionAnswering, RobertaModel,
                          get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import flatten, load_squad, postprocess_qa_predictions, prepare_features  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
MODELS = os.path.join(FIX, "models")
TRAIN = os.path.join(FIX, "train")
TOKS = os.path.join(FIX, "tokenizers")
SQUAD = os.path.join(FIX, "inputs", "squad.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

MAX_LEN = 64
STRIDE = 16
LOGIT_EXAMPLES = [0, 1, 5, 6, 8, 9]  # indices into squad.json (all three documents)
NOISE_STD = 0.1

WRITTEN = []  # (path, description)

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)
torch.set_default_dtype(torch.float32)


def rel(p):
    return os.path.relpath(p, ROOT)


def write_json(path, obj, desc):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    WRITTEN.append((path, desc))


def fl(t):
    """float32 tensor -> nested python floats (exact float32 values)."""
    assert t.dtype == torch.float32, t.dtype
    return t.detach().cpu().tolist()


def tensor_entry(t):
    return {"shape": list(t.shape), "data": fl(t)}


# =========================================================================
# 1. tiny checkpoints
# =========================================================================
def add_noise(model, gen):
    """Move every LayerNorm weight/bias, every bias, qa_outputs and the pooler off its init value."""
    touched = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("LayerNorm" in name or name.endswith(".bias") or name.startswith("qa_outputs.")
                    or name.startswith("pooler.")):
                p.add_(torch.randn(p.shape, generator=gen) * NOISE_STD)
                touched.append(name)
    return touched


def roberta_config(vocab_size):
    return RobertaConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=MAX_LEN + 1 + 1, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, hidden_act="gelu",
        attn_implementation="eager",  # plain softmax(QK^T/sqrt(d) + mask)V; not written to config.json
    )


def bert_config(vocab_size):
    return BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=MAX_LEN, type_vocab_size=2,
        pad_token_id=0, layer_norm_eps=1e-12, hidden_act="gelu",
        attn_implementation="eager",
    )


def build(cls, config, seed):
    torch.manual_seed(seed)
    model = cls(config)
    gen = torch.Generator().manual_seed(seed + 1)
    add_noise(model, gen)
    model.eval()
    return model


def save_model(model, folder, tok_name, desc, **kw):
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    model.save_pretrained(folder, **kw)
    for fn in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(TOKS, tok_name, fn), os.path.join(folder, fn))
    for fn in sorted(os.listdir(folder)):
        WRITTEN.append((os.path.join(folder, fn), desc))


def state_dict_report(label, folder):
    """Key list of a saved checkpoint, read back from disk."""
    keys = {}
    files = sorted(os.listdir(folder))
    for fn in files:
        p = os.path.join(folder, fn)
        if fn.endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(p, "pt") as f:
                for k in f.keys():
                    keys[k] = (list(f.get_slice(k).get_shape()), fn)
        elif fn.endswith(".bin"):
            sd = torch.load(p, map_location="cpu", weights_only=True)
            for k, v in sd.items():
                keys[k] = (list(v.shape), fn)
    print(f"--- {label}: {len(keys)} tensors")
    for k in sorted(keys):
        print(f"    {k:60s} {keys[k][0]}  [{keys[k][1]}]")
    return keys


def make_checkpoints(toks):
    rob = build(RobertaForQuestionAnswering, roberta_config(len(toks["bbpe"])), seed=1000)
    save_model(rob, os.path.join(MODELS, "roberta_qa"), "bbpe",
               "RobertaForQuestionAnswering, random init + noise, safetensors", safe_serialization=True)
    save_model(rob, os.path.join(MODELS, "roberta_sharded"), "bbpe",
               "roberta_qa weights in safetensors shards + index", safe_serialization=True,
               max_shard_size="100KB")
    bert = build(BertForQuestionAnswering, bert_config(len(toks["wordpiece"])), seed=2000)
    save_model(bert, os.path.join(MODELS, "bert_qa"), "wordpiece",
               "BertForQuestionAnswering, random init + noise, pytorch_model.bin", safe_serialization=False)
    base = build(RobertaModel, roberta_config(len(toks["bbpe"])), seed=3000)
    save_model(base, os.path.join(MODELS, "roberta_base"), "bbpe",
               "bare RobertaModel (with pooler), random init + noise, safetensors", safe_serialization=True)

    shards = [f for f in os.listdir(os.path.join(MODELS, "roberta_sharded")) if f.endswith(".safetensors")]
    assert len(shards) >= 2, shards

    # read everything back and check it round-trips
    for label, cls, model in (("roberta_qa", RobertaForQuestionAnswering, rob),
                              ("roberta_sharded", RobertaForQuestionAnswering, rob),
                              ("bert_qa", BertForQuestionAnswering, bert),
                              ("roberta_base", RobertaModel, base)):
        folder = os.path.join(MODELS, label)
        keys = state_dict_report(label, folder)
        back = cls.from_pretrained(folder)
        ref = model.state_dict()
        for k, v in back.state_dict().items():
            assert torch.equal(v, ref[k]), (label, k)
        assert set(keys) == set(ref), (label, set(keys) ^ set(ref))
    return {"roberta": rob, "bert": bert}


# =========================================================================
# 2/3. reference logits and infer output
# =========================================================================
def forward(model, feats, with_hidden=False):
    ids = torch.tensor([f["input_ids"] for f in feats])
    mask = torch.tensor([f["attention_mask"] for f in feats])
    kw = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in feats[0]:
        kw["token_type_ids"] = torch.tensor([f["token_type_ids"] for f in feats])
    with torch.no_grad():
        if with_hidden:
            base = model.roberta if hasattr(model, "roberta") else model.bert
            enc = base(**kw, output_hidden_states=True)
            logits = model.qa_outputs(enc.last_hidden_state)
            s, e = logits.split(1, dim=-1)
            out = model(**kw)
            assert torch.equal(out.start_logits, s.squeeze(-1).contiguous())
            return out.start_logits, out.end_logits, enc
        out = model(**kw)
    return out.start_logits, out.end_logits, None


def make_logits(models, toks, examples):
    for kind, tok_name in (("roberta", "bbpe"), ("bert", "wordpiece")):
        model, tok = models[kind], toks[tok_name]
        exs = [examples[i] for i in LOGIT_EXAMPLES]
        feats = prepare_features(tok, exs, MAX_LEN, STRIDE)
        s, e, enc = forward(model, feats, with_hidden=True)
        windows = []
        for i, f in enumerate(feats):
            w = {"example_index": f["example_index"], "input_ids": f["input_ids"],
                 "attention_mask": f["attention_mask"]}
            if "token_type_ids" in f:
                w["token_type_ids"] = f["token_type_ids"]
            w["start_logits"] = fl(s[i])
            w["end_logits"] = fl(e[i])
            windows.append(w)
        fx = {
            "model": f"models/{kind}_qa", "tokenizer": tok_name,
            "max_seq_length": MAX_LEN, "doc_stride": STRIDE,
            "examples": [{"id": x["id"], "question": x["question"], "context": x["context"]} for x in exs],
            "windows": windows,
            # window 0 only: encoder output and every hidden state ([embeddings, layer 0, layer 1])
            "last_hidden_state": fl(enc.last_hidden_state[0]),
            "hidden_states": [fl(h[0]) for h in enc.hidden_states],
        }
        assert torch.equal(enc.hidden_states[-1], enc.last_hidden_state)
        if kind == "roberta":
            fx["left_padded"] = left_padded_case(model, tok_name)
        write_json(os.path.join(MODELS, f"logits_{kind}.json"), fx,
                   f"{kind}_qa logits on {len(exs)} questions, {len(windows)} windows")
        print(f"logits_{kind}: {len(exs)} questions, {len(windows)} windows")


KORQUAD = os.path.join(ROOT, "..", "shared", "data", "korquad", "KorQuAD_v1.0_dev.json")
# Byte-level BPE splits Hangul into bytes: ~45 windows per question at 64 tokens.
KORQUAD_QUESTIONS = {"roberta": 4, "bert": 20}


def make_korquad_logits(models, toks):
    """Logits for the first KorQuAD dev questions. No text or ids are stored (the data may not
    be copied): the Rust test rebuilds the windows from ../shared, whose windows the
    tokenisation fixtures already prove equal to HF's."""
    if not os.path.exists(KORQUAD):
        print(f"skip korquad logits: {KORQUAD} is absent")
        return
    import hashlib
    digest = hashlib.sha256(open(KORQUAD, "rb").read()).hexdigest()
    every = flatten(load_squad(KORQUAD))
    for kind, tok_name in (("roberta", "bbpe"), ("bert", "wordpiece")):
        model, tok = models[kind], toks[tok_name]
        # Questions must leave more than `stride` context tokens in a 64-token window (HF
        # refuses otherwise); byte-level BPE makes Korean questions long.
        fits = [x for x in every
                if len(tok(x["question"].lstrip(), add_special_tokens=False)["input_ids"]) + 4 + STRIDE < MAX_LEN]
        exs = fits[:KORQUAD_QUESTIONS[kind]]
        feats = prepare_features(tok, exs, MAX_LEN, STRIDE)
        s, e, _ = forward(model, feats)
        fx = {
            "model": f"models/{kind}_qa", "tokenizer": tok_name, "source_sha256": digest,
            "max_seq_length": MAX_LEN, "doc_stride": STRIDE,
            "examples": [{"id": x["id"]} for x in exs],
            "windows": [{"example_index": f["example_index"], "start_logits": fl(s[i]),
                         "end_logits": fl(e[i])} for i, f in enumerate(feats)],
        }
        write_json(os.path.join(MODELS, f"korquad_logits_{kind}.json"), fx,
                   f"{kind}_qa logits on the first {len(exs)} KorQuAD dev questions")


def left_padded_case(model, tok_name):
    pairs = [
        ("미차담이 처음 세워진 해는 언제인가?", "미차담은 1901년에 세워진 도시이다."),
        ("Lena Whitlock의 배우자는 누구인가?", "Lena Whitlock married Tom in 1999."),
        ("매출은?", "작년 매출은 30억 원이다."),
    ]
    out = {"max_length": 40, "questions": [p[0] for p in pairs], "contexts": [p[1] for p in pairs]}
    res = {}
    for side in ("left", "right"):
        tok = AutoTokenizer.from_pretrained(os.path.join(TOKS, tok_name), padding_side=side)
        enc = tok([p[0] for p in pairs], [p[1] for p in pairs], truncation=True, max_length=40,
                  padding="max_length")
        feats = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]}
                 for i in range(len(pairs))]
        s, e, _ = forward(model, feats)
        res[side] = (feats, s, e)
        out[side] = {"input_ids": [f["input_ids"] for f in feats],
                     "attention_mask": [f["attention_mask"] for f in feats],
                     "start_logits": fl(s), "end_logits": fl(e)}
    # real tokens must get the same logits on both sides
    worst = 0.0
    for i in range(len(pairs)):
        lm = torch.tensor(res["left"][0][i]["attention_mask"]).bool()
        rm = torch.tensor(res["right"][0][i]["attention_mask"]).bool()
        assert lm.sum() < 40 and lm.sum() == rm.sum()
        assert not lm[0] and lm[-1], "left padding expected"
        for a, b in ((res["left"][1][i][lm], res["right"][1][i][rm]), (res["left"][2][i][lm], res["right"][2][i][rm])):
            worst = max(worst, (a - b).abs().max().item())
    assert worst < 1e-5, worst
    out["max_abs_diff_left_vs_right"] = worst
    print(f"left vs right padding: max |diff| over real tokens = {worst:.3g}")
    return out


def make_infer(models, toks, examples):
    for kind, tok_name in (("roberta", "bbpe"), ("bert", "wordpiece")):
        model, tok = models[kind], toks[tok_name]
        feats = prepare_features(tok, examples, MAX_LEN, STRIDE)
        s, e, _ = forward(model, feats)
        starts = [s[i].numpy() for i in range(len(feats))]
        ends = [e[i].numpy() for i in range(len(feats))]
        preds, nbest = postprocess_qa_predictions(
            examples, [{"example_index": f["example_index"], "offsets": f["validation_offsets"]} for f in feats],
            starts, ends, n_best_size=20, max_answer_length=30)
        fx = {
            "model": f"models/{kind}_qa", "tokenizer": tok_name, "input": "inputs/squad.json",
            "max_seq_length": MAX_LEN, "doc_stride": STRIDE, "n_best_size": 20, "max_answer_length": 30,
            "predictions": dict(preds),
            # float32 score (start+end logit) of the best minus the second-best n-best entry:
            # how far the Rust logits may drift before the predicted text can change
            "top2_score_gap": {k: float(np.float32(v[0]["start_logit"]) + np.float32(v[0]["end_logit"])
                                        - (np.float32(v[1]["start_logit"]) + np.float32(v[1]["end_logit"])))
                               for k, v in nbest.items()},
            "features": [{"example_index": f["example_index"], "start_logits": fl(s[i]),
                          "end_logits": fl(e[i])} for i, f in enumerate(feats)],
        }
        assert min(fx["top2_score_gap"].values()) > 1e-3, fx["top2_score_gap"]
        write_json(os.path.join(MODELS, f"infer_{kind}.json"), fx,
                   f"pipeline infer reference: {kind}_qa on {len(examples)} questions, {len(feats)} windows")
        print(f"infer_{kind}: {len(feats)} windows; predictions: {dict(preds)}")


# =========================================================================
# 4. BiLSTM head
# =========================================================================
def make_lstm():
    torch.manual_seed(4000)
    lstm = torch.nn.LSTM(input_size=8, hidden_size=8, num_layers=2, bidirectional=True, batch_first=True,
                         dropout=0.0)
    head = torch.nn.Linear(16, 2)
    lstm.eval()
    head.eval()
    x = torch.randn(2, 6, 8)
    lengths = [6, 4]
    with torch.no_grad():
        full, _ = lstm(x)
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=True,
                                                         enforce_sorted=False)
        pout, _ = lstm(packed)
        padded, out_lens = torch.nn.utils.rnn.pad_packed_sequence(pout, batch_first=True, total_length=6)
        logits = head(padded)
    assert out_lens.tolist() == lengths
    assert torch.all(padded[1, 4:] == 0)
    fx = {
        "config": {"input_size": 8, "hidden_size": 8, "num_layers": 2, "bidirectional": True,
                   "batch_first": True, "dropout": 0.0, "gate_order": "i,f,g,o"},
        "lstm": {k: tensor_entry(v) for k, v in lstm.state_dict().items()},
        "linear": {k: tensor_entry(v) for k, v in head.state_dict().items()},
        "x": tensor_entry(x),
        "output_full": tensor_entry(full),
        "lengths": lengths,
        "output_packed": tensor_entry(padded),
        "logits_packed": tensor_entry(logits),
    }
    write_json(os.path.join(TRAIN, "lstm.json"), fx, "2-layer BiLSTM (8->8x2) + Linear(16,2): full and packed")
    print("lstm: keys", list(lstm.state_dict().keys()))


class CnnHead(torch.nn.Module):
    """The `cnn` head as a PyTorch module: pads zeroed, Conv1d per kernel size ("same" padding),
    concatenated, ReLU, then qa_outputs. Its state_dict keys are the ones the Rust model uses."""

    def __init__(self, hidden, kernel_sizes=(1, 3, 5)):
        super().__init__()
        c = max(hidden // 3, 1)
        self.convs = torch.nn.ModuleList(
            [torch.nn.Conv1d(hidden, c, k, padding=k // 2) for k in kernel_sizes])
        self.qa_outputs = torch.nn.Linear(c * len(kernel_sizes), 2)

    def forward(self, x, mask):
        x = (x * mask[..., None]).transpose(1, 2)
        y = torch.relu(torch.cat([conv(x) for conv in self.convs], dim=1)).transpose(1, 2)
        return self.qa_outputs(y)


def make_cnn():
    torch.manual_seed(4100)
    head = CnnHead(9, (1, 3, 5)).eval()
    x = torch.randn(2, 7, 9)
    lengths = [7, 4]
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(7)] for n in lengths])
    with torch.no_grad():
        logits = head(x, mask)
        # The same windows cut to their own length give the same logits at real tokens.
        short = head(x[1:, :4], mask[1:, :4])
    assert torch.allclose(short[0], logits[1, :4], atol=1e-6)
    state = head.state_dict()
    fx = {
        "config": {"hidden": 9, "kernel_sizes": [1, 3, 5], "channels": 3},
        "cnn": {k: tensor_entry(v) for k, v in state.items() if k.startswith("convs.")},
        "linear": {k.removeprefix("qa_outputs."): tensor_entry(v)
                   for k, v in state.items() if k.startswith("qa_outputs.")},
        "x": tensor_entry(x),
        "lengths": lengths,
        "logits": tensor_entry(logits),
    }
    write_json(os.path.join(TRAIN, "cnn.json"), fx, "CNN head: Conv1d 9->3 (k 1, 3, 5), ReLU, Linear(9, 2)")
    print("cnn: keys", list(state.keys()))


# =========================================================================
# 5. losses
# =========================================================================
def focal_loss(x, target, gamma=2.0):
    log_prob = F.log_softmax(x, dim=-1)
    prob = torch.exp(log_prob)
    return F.nll_loss(((1 - prob) ** gamma) * log_prob, target, reduction="mean")


def label_smoothing_loss(x, target, smoothing=0.1, classes=10):
    pred = x.log_softmax(dim=-1)
    with torch.no_grad():
        true_dist = torch.zeros_like(pred)
        true_dist.fill_(smoothing / (classes - 1))
        true_dist.scatter_(1, target.data.unsqueeze(1), 1.0 - smoothing)
    return torch.mean(torch.sum(-true_dist * pred, dim=-1))


def make_losses():
    g = torch.Generator().manual_seed(5000)
    start = torch.randn(3, 10, generator=g) * 2
    end = torch.randn(3, 10, generator=g) * 2
    ts = torch.tensor([1, 0, 9])
    te = torch.tensor([4, 0, 9])
    fx = {"start_logits": fl(start), "end_logits": fl(end), "start_positions": ts.tolist(),
          "end_positions": te.tolist(), "losses": {}}
    fns = {
        "ce": ({}, lambda x, t: F.cross_entropy(x, t)),
        "focal": ({"gamma": 2.0}, lambda x, t: focal_loss(x, t, 2.0)),
        "label_smoothing": ({"smoothing": 0.1, "classes": 10}, lambda x, t: label_smoothing_loss(x, t, 0.1, 10)),
    }
    for name, (params, fn) in fns.items():
        s = start.clone().requires_grad_(True)
        e = end.clone().requires_grad_(True)
        ls = fn(s, ts)
        le = fn(e, te)
        total = (ls + le) / 2
        total.backward()
        fx["losses"][name] = {"params": params, "start_loss": ls.item(), "end_loss": le.item(),
                              "total": total.item(), "grad_start": fl(s.grad), "grad_end": fl(e.grad)}
        print(f"loss {name}: total {total.item():.6f}")
    write_json(os.path.join(TRAIN, "losses.json"), fx, "ce / focal(γ=2) / label smoothing(0.1) + grads")


# =========================================================================
# 6. optimizers
# =========================================================================
OPT_PARAMS = [
    ("encoder.layer.0.attention.self.query.weight", (4, 3)),
    ("encoder.layer.0.attention.self.query.bias", (4,)),
    ("encoder.layer.0.output.LayerNorm.weight", (4,)),
    ("qa_outputs.weight", (2, 4)),
]


def no_decay(name):
    return "bias" in name or "LayerNorm.weight" in name


def opt_inputs():
    g = torch.Generator().manual_seed(6000)
    init = {n: torch.randn(shape, generator=g) for n, shape in OPT_PARAMS}
    init["encoder.layer.0.output.LayerNorm.weight"] += 1.0
    grads = []
    for k in range(5):
        gs = {n: torch.randn(shape, generator=g) * 0.5 for n, shape in OPT_PARAMS}
        if k in (1, 3):
            # rows of query.weight orthogonal to the initial rows: AdamP's channel-wise projection
            w, gr = init["encoder.layer.0.attention.self.query.weight"], gs["encoder.layer.0.attention.self.query.weight"]
            gs["encoder.layer.0.attention.self.query.weight"] = gr - (gr * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True) * w
        if k == 2:
            # qa_outputs.weight orthogonal to the initial weight as a whole: AdamP's layer-wise projection
            w, gr = init["qa_outputs.weight"], gs["qa_outputs.weight"]
            gs["qa_outputs.weight"] = gr - (gr * w).sum() / (w * w).sum() * w
        grads.append(gs)
    return init, grads


def run_optimizer(label, init, grads, make_opt, make_sched=None):
    import adamp
    params = {n: torch.nn.Parameter(init[n].clone()) for n, _ in OPT_PARAMS}
    groups = [
        {"params": [params[n] for n, _ in OPT_PARAMS if not no_decay(n)], "weight_decay": 0.01},
        {"params": [params[n] for n, _ in OPT_PARAMS if no_decay(n)], "weight_decay": 0.0},
    ]
    opt = make_opt(groups)
    sched = make_sched(opt) if make_sched else None
    branches = []
    orig = adamp.AdamP._projection

    def spy(self, p, grad, perturb, delta, wd_ratio, eps):
        before = perturb.clone()
        out, wd = orig(self, p, grad, perturb, delta, wd_ratio, eps)
        name = next(n for n, q in params.items() if q is p)
        # channel-wise vs layer-wise: recompute which view hit the threshold
        which = "none"
        if wd != 1:
            cv = F.cosine_similarity(grad.view(grad.size(0), -1), p.data.view(p.size(0), -1), dim=1, eps=eps).abs()
            which = "channel" if cv.max() < delta / math.sqrt(p[0].numel()) else "layer"
        branches[-1][name] = which
        del before
        return out, wd

    adamp.AdamP._projection = spy
    steps = []
    try:
        for k, gs in enumerate(grads):
            branches.append({})
            lr_used = opt.param_groups[0]["lr"]
            for n, p in params.items():
                p.grad = gs[n].clone()
            opt.step()
            if sched is not None:
                sched.step()
            rec = {"lr": lr_used, "params": {}, "state": {}}
            for n, p in params.items():
                st = opt.state[p]
                rec["params"][n] = fl(p.data)
                step = st["step"]
                rec["state"][n] = {"exp_avg": fl(st["exp_avg"]), "exp_avg_sq": fl(st["exp_avg_sq"]),
                                   "step": float(step.item() if torch.is_tensor(step) else step)}
            if isinstance(opt, adamp.AdamP):
                rec["adamp_projection"] = branches[-1]
            steps.append(rec)
    finally:
        adamp.AdamP._projection = orig
    if isinstance(opt, adamp.AdamP):
        print(f"optim {label}: projections per step {branches}")
    return steps


def make_optim():
    import adamp
    init, grads = opt_inputs()
    common = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    fx = {
        "param_names": [n for n, _ in OPT_PARAMS],
        "shapes": {n: list(s) for n, s in OPT_PARAMS},
        "no_decay": [n for n, _ in OPT_PARAMS if no_decay(n)],
        "init": {n: fl(init[n]) for n, _ in OPT_PARAMS},
        "grads": [{n: fl(g[n]) for n, _ in OPT_PARAMS} for g in grads],
        "runs": {},
    }
    fx["runs"]["adamw"] = {
        "hparams": dict(common, weight_decay_no_decay_group=0.0),
        "steps": run_optimizer("adamw", init, grads,
                               lambda gr: torch.optim.AdamW(gr, foreach=False, **common)),
    }
    for label, nest in (("adamp", False), ("adamp_nesterov", True)):
        hp = dict(common, delta=0.1, wd_ratio=0.1, nesterov=nest)
        fx["runs"][label] = {
            "hparams": dict(hp, weight_decay_no_decay_group=0.0),
            "steps": run_optimizer(label, init, grads, lambda gr, hp=hp: adamp.AdamP(gr, **hp)),
        }
    fx["runs"]["adamw_sched"] = {
        "hparams": dict(common, weight_decay_no_decay_group=0.0, schedule="linear", warmup_steps=2,
                        total_steps=5),
        "steps": run_optimizer("adamw_sched", init, grads,
                               lambda gr: torch.optim.AdamW(gr, foreach=False, **common),
                               lambda opt: get_linear_schedule_with_warmup(opt, 2, 5)),
    }
    # the crafted steps must exercise both AdamP projection branches
    pr = [s["adamp_projection"] for s in fx["runs"]["adamp"]["steps"]]
    assert any(p.get("encoder.layer.0.attention.self.query.weight") == "channel" for p in pr), pr
    assert any(p.get("qa_outputs.weight") == "layer" for p in pr), pr
    assert any(p.get("qa_outputs.weight") == "none" for p in pr), pr
    write_json(os.path.join(TRAIN, "optim.json"), fx, "AdamW / AdamP / AdamP nesterov / AdamW+linear warmup, 5 steps")


# =========================================================================
# 7. schedules
# =========================================================================
def make_schedules():
    fx = {"base_lr": 1e-3, "total_steps": 100, "num_cycles": 0.5, "schedules": {}}
    for warmup in (10, 0):
        for name, fn in (("linear", get_linear_schedule_with_warmup),
                         ("cosine", lambda o, w, t: get_cosine_schedule_with_warmup(o, w, t, num_cycles=0.5))):
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.SGD([p], lr=1e-3)
            sched = fn(opt, warmup, 100)
            lrs = []
            for _ in range(100):
                lrs.append(opt.param_groups[0]["lr"])
                opt.step()
                sched.step()
            fx["schedules"][f"{name}_warmup{warmup}"] = {"warmup_steps": warmup, "lrs": lrs}
    write_json(os.path.join(TRAIN, "schedules.json"), fx, "linear / cosine warmup schedules, lr before each of 100 steps")


# =========================================================================
# 8. gradient clipping
# =========================================================================
def make_clip():
    g = torch.Generator().manual_seed(8000)
    shapes = [(4, 3), (4,), (2, 4)]
    fx = {"max_norm": 1.0, "norm_type": 2.0, "cases": {}}
    for label, scale in (("clipped", 1.0), ("unchanged", 0.05)):
        grads = [torch.randn(s, generator=g) * scale for s in shapes]
        params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        total = torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
        assert (total.item() > 1.0) == (label == "clipped"), total
        fx["cases"][label] = {"grads": [tensor_entry(x) for x in grads], "total_norm": total.item(),
                              "clipped": [tensor_entry(p.grad) for p in params]}
        print(f"clip {label}: total norm {total.item():.6f}")
    write_json(os.path.join(TRAIN, "clip.json"), fx, "clip_grad_norm_(max_norm=1): clipped and unchanged cases")


def main():
    if len(sys.argv) > 1:
        # Only the named fixtures that need no checkpoint, e.g. `cnn lstm`.
        for name in sys.argv[1:]:
            globals()[f"make_{name}"]()
        return
    toks = {n: AutoTokenizer.from_pretrained(os.path.join(TOKS, n)) for n in ("bbpe", "wordpiece")}
    examples = flatten(load_squad(SQUAD))
    models = make_checkpoints(toks)
    make_logits(models, toks, examples)
    make_korquad_logits(models, toks)
    make_infer(models, toks, examples)
    make_lstm()
    make_cnn()
    make_losses()
    make_optim()
    make_schedules()
    make_clip()
    print()
    total = 0
    for path, desc in WRITTEN:
        sz = os.path.getsize(path)
        assert sz < 2 * 1024 * 1024, path
        total += sz
        print(f"{sz:>9}  {rel(path)}  - {desc}")
    print(f"{total:>9}  total")
    assert total < 8 * 1024 * 1024


if __name__ == "__main__":
    main()
