"""PyTorch + transformers reference for `pipeline bench`: the same training step
(RobertaForQuestionAnswering, CE start/end loss, clip_grad_norm_ 1.0, AdamW) on random inputs of
the same shape, printed as the same JSON fields.

Usage: torch_bench.py --model roberta-base|roberta-large|tiny|<config.json> [--head linear|bilstm]
       --seq 384 --batch 8 --steps 10 --warmup 2 [--device cuda]
       [--precision f32|bf16-mixed|f16-mixed] [--peak-tflops X]
(--head bilstm: the encoder, nn.LSTM(hidden, hidden, 2 layers, bidirectional, dropout 0.1), then
Linear(2 hidden, 2), as pipeline's model.head = "bilstm" and the competition seed)
(bf16-mixed, also spelt bf16: torch.autocast with f32 weights, as HF Trainer's --bf16 and
pipeline's train.precision = "bf16-mixed" do; f16-mixed: f16 autocast with torch's GradScaler,
as HF Trainer's --fp16 and pipeline's "f16-mixed" do)
"""

import argparse
import json
import os
import time

import torch
from transformers import AutoConfig, AutoModel, AutoModelForQuestionAnswering, RobertaConfig

SHAPES = {"roberta-base": (768, 12, 12, 3072), "roberta-large": (1024, 24, 16, 4096), "tiny": (32, 2, 4, 64)}

p = argparse.ArgumentParser()
p.add_argument("--model", default="roberta-base")
p.add_argument("--head", default="linear", choices=["linear", "bilstm"])
p.add_argument("--seq", type=int, default=384)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--device", default="cuda")
p.add_argument("--precision", default="f32", choices=["f32", "bf16", "bf16-mixed", "f16-mixed"])
p.add_argument("--peak-tflops", type=float, default=None)
a = p.parse_args()

if a.model in SHAPES:
    h, layers, heads, inter = SHAPES[a.model]
    cfg = RobertaConfig(vocab_size=1000 if a.model == "tiny" else 50265, hidden_size=h,
                        num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter,
                        max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)
elif os.path.isfile(a.model):
    # a HF config.json, as `pipeline bench --model <config.json>` takes it
    with open(a.model) as f:
        raw = json.load(f)
    cfg = AutoConfig.for_model(raw.pop("model_type", "roberta"), **raw)
    h, layers = cfg.hidden_size, cfg.num_hidden_layers
else:
    p.error(f"--model {a.model!r}: neither {', '.join(SHAPES)} nor a config.json file")


class BiLstmQa(torch.nn.Module):
    """Encoder (no pooler), 2-layer bidirectional LSTM of the encoder's width, Linear(2h, 2);
    loss as HF's QA models compute it (mean of the start and end cross-entropies)."""

    def __init__(self, cfg):
        super().__init__()
        self.encoder = AutoModel.from_config(cfg, add_pooling_layer=False)
        h = cfg.hidden_size
        self.lstm = torch.nn.LSTM(h, h, num_layers=2, bidirectional=True, batch_first=True, dropout=0.1)
        self.qa_outputs = torch.nn.Linear(2 * h, 2)

    def forward(self, input_ids, attention_mask, start_positions, end_positions):
        x = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        x, _ = self.lstm(x)
        start, end = self.qa_outputs(x).split(1, dim=-1)
        ce = torch.nn.functional.cross_entropy
        loss = (ce(start.squeeze(-1).float(), start_positions) + ce(end.squeeze(-1).float(), end_positions)) / 2
        return type("Out", (), {"loss": loss})


dev = torch.device(a.device)
if a.head == "bilstm":
    model = BiLstmQa(cfg).to(dev).train()
else:
    model = AutoModelForQuestionAnswering.from_config(cfg).to(dev).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
ids = torch.randint(3, cfg.vocab_size - 1, (a.batch, a.seq), device=dev)
mask = torch.ones_like(ids)
sp = torch.randint(1, a.seq - 1, (a.batch,), device=dev)
ep = torch.randint(1, a.seq - 1, (a.batch,), device=dev)
half = {"bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16, "f16-mixed": torch.float16}.get(a.precision)
autocast = torch.autocast(dev.type, dtype=half or torch.float32, enabled=half is not None)
# loss scaling for f16 only, as HF Trainer's --fp16 does (torch.amp.GradScaler, default settings)
scaler = torch.amp.GradScaler(dev.type, enabled=a.precision == "f16-mixed")


def step():
    with autocast:
        out = model(input_ids=ids, attention_mask=mask, start_positions=sp, end_positions=ep)
    scaler.scale(out.loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


w0 = time.perf_counter()
for _ in range(a.warmup):
    step()
if dev.type == "cuda":
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
warmup_seconds = time.perf_counter() - w0
t0 = time.perf_counter()
for _ in range(a.steps):
    step()
if dev.type == "cuda":
    torch.cuda.synchronize()
dt = (time.perf_counter() - t0) / a.steps
params = sum(p.numel() for p in model.parameters())
emb = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * h
flops = 6.0 * (params - emb) + 12.0 * layers * h * a.seq
tps = a.batch * a.seq / dt
print(json.dumps({
    "model": a.model, "head": a.head, "device": a.device, "precision": a.precision, "seq": a.seq, "batch": a.batch,
    "steps": a.steps, "parameters": params, "step_seconds": dt, "examples_per_second": a.batch / dt,
    "tokens_per_second": tps, "achieved_tflops": flops * tps / 1e12,
    "mfu": (flops * tps / 1e12 / a.peak_tflops) if a.peak_tflops else None,
    "warmup_seconds": warmup_seconds,
    "peak_gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
    # the caching allocator's reserved memory: what pipeline's peak_device_memory_mib measures
    "peak_device_memory_mib": torch.cuda.max_memory_reserved() / 2**20 if dev.type == "cuda" else None,
}))
