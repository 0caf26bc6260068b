"""Loads folders exported by `pipeline` with transformers and compares their logits with the
fixture references: proof that exports are real HF checkpoints.

Usage: PIPELINE_EXPORT_DIR=/tmp/exports cargo test --release --test model_parity export_round_trips
       .venv/bin/python tools/check_export.py /tmp/exports
"""

import json
import sys

import torch
from transformers import AutoModelForQuestionAnswering

root = sys.argv[1]
for name, ref in (("roberta_qa", "logits_roberta.json"), ("bert_qa", "logits_bert.json")):
    model = AutoModelForQuestionAnswering.from_pretrained(f"{root}/{name}", attn_implementation="eager")
    model.eval()
    fx = json.load(open(f"tests/fixtures/models/{ref}"))
    worst = 0.0
    for w in fx["windows"]:
        ids = torch.tensor([w["input_ids"]])
        mask = torch.tensor([w["attention_mask"]])
        kw = {"token_type_ids": torch.tensor([w["token_type_ids"]])} if "token_type_ids" in w else {}
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, **kw)
        for got, want in ((out.start_logits[0], w["start_logits"]), (out.end_logits[0], w["end_logits"])):
            worst = max(worst, (got - torch.tensor(want)).abs().max().item())
    print(f"{name}: {type(model).__name__} loaded by transformers, max |Δ logits| = {worst:.3e}")
    assert worst <= 1e-4
