"""Join bench_gpu's RESULT lines with PyTorch's baselines of the same run into
markdown tables and the issue's target checks. Usage: gpu_report.py bench.txt torch.txt"""
import re
import sys


def parse_bench(path):
    copy, card, decode, prefill = None, "?", {}, {}
    for line in open(path, errors="replace"):
        if line.startswith("# "):
            card = line[2:].strip()
        if not line.startswith("RESULT,"):
            continue
        f = line.strip().split(",")
        if f[1] == "copy":
            copy = float(f[2])
        elif f[1] == "decode":
            extra = (float(f[10]), float(f[11])) if len(f) > 11 else (float("nan"), float("nan"))
            decode[(f[2], int(f[3]), int(f[4]), int(f[5]))] = (float(f[6]), float(f[7]), float(f[8]), f[9]) + extra
        elif f[1] == "prefill":
            prefill[f[2]] = (float(f[6]), float(f[7]), f[9])
    return card, copy, decode, prefill


def parse_torch(path):
    dec, naive, lq, pre, card, copy = {}, {}, {}, {}, "?", None
    for line in open(path, errors="replace"):
        m = re.match(r"(\d+) 32 8 128 (\d+) \| ([\d.]+) (\S+) \d+ \d+% \| ([\d.na]+)", line)
        if m:
            key = (int(m.group(1)), int(m.group(2)))
            dec[key] = (float(m.group(3)), m.group(4))
            naive[key] = float(m.group(5))
        m = re.match(r"Lq=(\d+) \| ([\d.]+) (\S+)", line)
        if m:
            lq[int(m.group(1))] = (float(m.group(2)), m.group(3))
        m = re.match(r"(\d+) \| ([\d.]+) (\S+) (\d+) \| (.*)", line)
        if m:
            alls = dict(re.findall(r"(\w+)=([\d.inf]+)", m.group(5)))
            pre[int(m.group(1))] = (float(m.group(2)), m.group(3), alls)
        if line.startswith("d2d copy"):
            copy = float(line.split()[2])
        if line.startswith("# "):
            card = line[2:].strip()
    return dec, naive, lq, pre, card, copy


def print_labelled(path):
    """The [label] lines (a baseline commit, build variants, run-time variants) of
    one run side by side: us per call for each decode row, ratio to the first label."""
    rows, labels = {}, []
    pat = re.compile(r"\[([^\]]+)\] (\S+)\s+(\d+)\s+(\d+)\s+(\d+) \|\s+([\d.]+)")
    for line in open(path, errors="replace"):
        m = pat.match(line)
        if not m:
            continue
        label = m.group(1)
        if label not in labels:
            labels.append(label)
        rows.setdefault(m.group(2, 3, 4, 5), {})[label] = float(m.group(6))
    if not rows:
        return
    ratio_heads = [f"{x}/{labels[0]}" for x in labels[1:]]
    print("| format | B | L | Lq | " + " | ".join([f"{x} us" for x in labels] + ratio_heads) + " |")
    print("|---" * (4 + 2 * len(labels) - 1) + "|")
    for key, t in rows.items():
        us = [t.get(x) for x in labels]
        cells = [f"{u:.2f}" if u else "-" for u in us]
        ratios = [f"{u / us[0]:.3f}" if u and us[0] else "-" for u in us[1:]]
        print("| " + " | ".join(key) + " | " + " | ".join(cells + ratios) + " |")
    print()


def main():
    card, copy, decode, prefill = parse_bench(sys.argv[1])
    dec, naive, lqt, pre, tcard, tcopy = parse_torch(sys.argv[2])
    copy_s = f"{copy:.0f}" if copy else "- (no full benchmark in this run)"
    print(f"Card: {card}; qsdpa copy ceiling {copy_s} GB/s; PyTorch run: {tcard}, copy {tcopy} GB/s\n")
    print_labelled(sys.argv[1])
    if not decode:
        return
    print("| format | B | L | Lq | qsdpa us | GB/s | % copy | host us/call | graph us/call | torch fp16 us |"
          " speedup vs fp16 | vs dequant+SDPA | kernel |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (fmt, b, l, q), (us, gb, pct, kern, host, graph) in decode.items():
        t = dec.get((b, l)) if q == 1 else (lqt.get(q) if (b, l) == (1, 32768) else None)
        n = naive.get((b, l)) if q == 1 and fmt == "affine4g64" else None
        ts = f"{t[0]:.1f} ({t[1][:5]})" if t else "-"
        sp = f"{t[0] / us:.2f}x" if t else "-"
        ns = f"{n / us:.1f}x" if n else "-"
        print(f"| {fmt} | {b} | {l} | {q} | {us:.2f} | {gb:.0f} | {pct:.1f}% | {host:.2f} | {graph:.2f} | {ts} | {sp} |"
              f" {ns} | {kern} |")
    print("\n| prefill 4K causal | qsdpa us | TFLOP/s | kernel |")
    print("|---|---|---|---|")
    for fmt, (us, tf, kern) in prefill.items():
        print(f"| {fmt} | {us:.1f} | {tf:.0f} | {kern} |")
    if 4096 in pre:
        print(f"\nPyTorch prefill 4K causal: best {pre[4096][0]:.3f} ms ({pre[4096][1]}); all: {pre[4096][2]}")

    def d(fmt, b, l, q):
        return decode.get((fmt, b, l, q), (float("nan"),) * 3 + ("?",) + (float("nan"),) * 2)

    print("\n## Targets")
    a1 = d("affine4g64", 1, 32768, 1)[0]
    print(f"- 4-bit g64 Lq=1 32K <= 15 us: {a1:.2f} us -> {'MET' if a1 <= 15 else 'MISSED'}")
    p128 = d("affine4g64", 1, 131072, 1)[2]
    print(f"- 4-bit g64 Lq=1 128K >= 90% copy: {p128:.1f}% -> {'MET' if p128 >= 90 else 'MISSED'}")
    a8 = d("affine8g64", 1, 32768, 1)[0]
    print(f"- 8-bit g64 Lq=1 32K <= 27 us: {a8:.2f} us -> {'MET' if a8 <= 27 else 'MISSED'}")
    a4q = d("affine4g64", 1, 32768, 4)[0]
    print(f"- Lq=4 <= 1.2x Lq=1 at 32K: {a4q:.2f} / {a1:.2f} = {a4q / a1:.2f}x -> {'MET' if a4q <= 1.2 * a1 else 'MISSED'}")
    b8 = d("affine4g64", 8, 8192, 1)[0]
    print(f"- B=8 8K 4-bit <= 30 us: {b8:.2f} us -> {'MET' if b8 <= 30 else 'MISSED'}")
    if "affine4g64" in prefill and "f16" in prefill:
        q4, f16 = prefill["affine4g64"][0], prefill["f16"][0]
        print(f"- prefill 4-bit >= 90% of own fp16-KV prefill: {f16 / q4 * 100:.0f}% -> {'MET' if f16 / q4 >= 0.9 else 'MISSED'}")
        if 4096 in pre and "FLASH_ATTENTION" in pre[4096][2]:
            fl = float(pre[4096][2]["FLASH_ATTENTION"]) * 1e3
            print(f"- prefill 4-bit >= 70% of PyTorch flash fp16 ({fl:.0f} us): {fl / q4 * 100:.0f}% -> "
                  f"{'MET' if fl / q4 >= 0.7 else 'MISSED'}")


if __name__ == "__main__":
    main()
