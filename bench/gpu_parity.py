"""Model parity on a GPU: `pipeline infer --device cuda` on the tiny checkpoints of
tests/fixtures/models against the transformers logits stored in infer_*.json (the same check as
tests/infer.rs, which runs on the CPU). Prints max |Δ logits| per model and exits non-zero when
a difference exceeds --tol or a decoded answer differs.

Usage: gpu_parity.py BIN [--device cuda] [--tol 1e-3]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

p = argparse.ArgumentParser()
p.add_argument("bin")
p.add_argument("--device", default="cuda")
p.add_argument("--tol", type=float, default=1e-3)
a = p.parse_args()

fx_dir = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
failed = False
for model, ref in [("models/roberta_qa", "models/infer_roberta.json"), ("models/bert_qa", "models/infer_bert.json")]:
    fx = json.loads((fx_dir / ref).read_text())
    with tempfile.TemporaryDirectory() as out:
        cmd = [a.bin, "infer", "-q", "--device", a.device, "--model", str(fx_dir / model),
               "--data", str(fx_dir / "inputs/squad.json"), "--out", out,
               "--max-seq-length", str(fx["max_seq_length"]), "--doc-stride", str(fx["doc_stride"])]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{model}: infer failed: {r.stderr.strip()[-2000:]}")
            failed = True
            continue
        preds = json.loads((Path(out) / "predictions.json").read_text())
        st = load_file(str(Path(out) / "logits.safetensors"))
    feats = fx["features"]
    d = 0.0
    for key in ("start_logits", "end_logits"):
        want = np.array([f[key] for f in feats], dtype=np.float32)
        d = max(d, float(np.abs(st[key] - want).max()))
    same = preds == fx["predictions"]
    ok = d <= a.tol and same
    failed |= not ok
    print(f"{model} on {a.device}: {len(feats)} windows, max |Δ logits| vs transformers = {d:.3e}, "
          f"answers {'identical' if same else 'DIFFER'} -> {'ok' if ok else 'FAIL'}")
sys.exit(1 if failed else 0)
