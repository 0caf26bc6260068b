"""HF reference for the `prepare` benchmark: run_qa.py's `prepare_train_features` on a SQuAD file.

Usage: prepare_hf.py DATA.json TOKENIZER_DIR MAX_SEQ_LENGTH DOC_STRIDE [--datasets]
Prints one JSON line: seconds for loading, tokenising, labelling, the total, and the window count.
With --datasets it also times the same function through `datasets.Dataset.map(batched=True)`,
the way run_qa.py calls it (single process).
"""

import json
import sys
import time


def prepare_train_features(tokenizer, examples, max_len, stride):
    # The labelling of transformers' examples/pytorch/question-answering/run_qa.py.
    questions = [q.lstrip() for q in examples["question"]]
    tok = tokenizer(
        questions,
        examples["context"],
        truncation="only_second",
        max_length=max_len,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    t_tok = time.perf_counter()
    sample_mapping = tok.pop("overflow_to_sample_mapping")
    offset_mapping = tok.pop("offset_mapping")
    tok["start_positions"] = []
    tok["end_positions"] = []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tok["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id)
        sequence_ids = tok.sequence_ids(i)
        answers = examples["answers"][sample_mapping[i]]
        if len(answers["answer_start"]) == 0:
            tok["start_positions"].append(cls_index)
            tok["end_positions"].append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        s = 0
        while sequence_ids[s] != 1:
            s += 1
        e = len(input_ids) - 1
        while sequence_ids[e] != 1:
            e -= 1
        if not (offsets[s][0] <= start_char and offsets[e][1] >= end_char):
            tok["start_positions"].append(cls_index)
            tok["end_positions"].append(cls_index)
        else:
            while s < len(offsets) and offsets[s][0] <= start_char:
                s += 1
            tok["start_positions"].append(s - 1)
            while offsets[e][1] >= end_char:
                e -= 1
            tok["end_positions"].append(e + 1)
    return tok, t_tok


def main():
    data, tok_dir, max_len, stride = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    from transformers import PreTrainedTokenizerFast

    t0 = time.perf_counter()
    raw = json.load(open(data, encoding="utf-8"))
    ex = {"id": [], "question": [], "context": [], "answers": []}
    for art in raw["data"]:
        for para in art["paragraphs"]:
            for qa in para["qas"]:
                ex["id"].append(qa["id"])
                ex["question"].append(qa["question"])
                ex["context"].append(para["context"])
                ex["answers"].append(
                    {
                        "text": [a["text"] for a in qa["answers"]],
                        "answer_start": [a["answer_start"] for a in qa["answers"]],
                    }
                )
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    t1 = time.perf_counter()
    feats, t_tok = prepare_train_features(tokenizer, ex, max_len, stride)
    t2 = time.perf_counter()
    out = {
        "load_s": t1 - t0,
        "tokenize_s": t_tok - t1,
        "label_s": t2 - t_tok,
        "windows_s": t2 - t1,
        "total_s": t2 - t0,
        "windows": len(feats["input_ids"]),
    }
    if "--datasets" in sys.argv:
        import datasets

        ds = datasets.Dataset.from_dict(ex)
        t3 = time.perf_counter()
        mapped = ds.map(
            lambda b: prepare_train_features(tokenizer, b, max_len, stride)[0],
            batched=True,
            remove_columns=ds.column_names,
            load_from_cache_file=False,
        )
        out["datasets_map_s"] = time.perf_counter() - t3
        out["datasets_windows"] = len(mapped)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
