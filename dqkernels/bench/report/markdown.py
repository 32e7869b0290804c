"""The result document as a markdown table: a header on the device, versions and
ceilings, one row per record with the columns its records hold, the compile times and the
notes."""

from __future__ import annotations

import math
from typing import Any, Callable

from dqkernels.bench.modes import Mode, result_mode


def _speed(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


def _num(v) -> str:
    """3 significant digits without exponents for ordinary magnitudes."""
    if v is None:
        return "–"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _pct(v) -> str:
    return _num(None if v is None else 100 * v)


def _err(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, str) or not math.isfinite(v):
        return str(v)
    return f"{v:.1e}"


def _cell(text) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


Column = tuple[str, Callable[[dict], str]]


def _vs(name: str) -> Callable[[dict], str]:
    return lambda r: _speed((r.get("vs") or {}).get(name))


def columns(records: list[dict], mode: Mode) -> list[Column]:
    """The value columns (after case, shape, dtype, impl): those the ok records hold."""
    ok = [r for r in records if r["status"] == "ok"]

    def has(key: str) -> bool:
        return any(r.get(key) is not None for r in ok)

    external: list[str] = []
    for r in records:
        if r.get("kind") == "external" and r["impl"] not in external:
            external.append(r["impl"])
    cols: list[Column] = [(mode.ms_label, lambda r: _num(r.get("ms")))]
    if has("fwd_ms"):
        cols.append(("fwd ms", lambda r: _num(r.get("fwd_ms"))))
    cols += [
        ("vs eager", lambda r: _speed(r.get("speedup_vs_eager"))),
        ("vs compile", lambda r: _speed(r.get("speedup_vs_compile"))),
    ]
    cols += [(f"vs {n}", _vs(n)) for n in external]
    if has("gbps"):
        cols += [
            ("GB/s", lambda r: _num(r.get("gbps"))),
            ("% copy BW", lambda r: _pct(r.get("frac_copy_bw"))),
        ]
    if has("tflops"):
        cols += [
            ("TFLOP/s", lambda r: _num(r.get("tflops"))),
            ("% matmul", lambda r: _pct(r.get("frac_matmul"))),
        ]
    if has("peak_mem_bytes"):
        cols.append(
            (
                "extra mem MiB",
                lambda r: _num(
                    None if r.get("peak_mem_bytes") is None else r["peak_mem_bytes"] / 2**20
                ),
            )
        )
    if has("grad_rel_err"):
        cols.append(("grad err", lambda r: _err(r.get("grad_rel_err"))))
    if has("exact_frac"):
        cols.append(
            (
                "exact %",
                lambda r: "–" if r.get("exact_frac") is None else f"{100 * r['exact_frac']:.1f}",
            )
        )
    if has("out_rel_err"):
        cols.append(("out err", lambda r: _err(r.get("out_rel_err"))))
    if any(r.get("note") for r in records):
        cols.append(("note", lambda r: _cell(r.get("note") or "")))
    return cols


def table(records: list[dict], mode: Mode) -> list[str]:
    """One line per record; a row that did not run says why in its first value cell."""
    cols = columns(records, mode)
    heads = ["case", "shape", "dtype", "impl"] + [name for name, _ in cols]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in records:
        cells = [r["case"], r["shape"], r["dtype"], r["impl"]]
        if r["status"] != "ok":
            text = f"{r['status']}: {str(r.get('error'))[:160]}"
            if r.get("note"):
                text += f" ({r['note']})"
            cells += [_cell(text)] + [""] * (len(cols) - 1)
        else:
            cells += [fmt(r) for _, fmt in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_table(result: dict[str, Any]) -> str:
    """The records as a markdown table, with a header on device and ceilings."""
    env, ceil = result.get("environment", {}), result.get("ceilings", {})
    mode = result_mode(result)
    lines = [f"## {result['op']} on {env.get('device_name')}", ""]
    vers = [f"torch {env.get('torch')}"]
    if env.get("torch_cuda"):
        vers.append(f"CUDA {env['torch_cuda']}")
    if env.get("triton"):
        vers.append(f"triton {env['triton']}")
    vers.append(f"python {env.get('python')}")
    if env.get("git_commit"):
        vers.append(f"commit {env['git_commit'][:10]}{'+dirty' if env.get('git_dirty') else ''}")
    lines.append(", ".join(vers) + f"; {env.get('date_utc')}")
    lines.append("")
    c = []
    if "copy_gbps" in ceil:
        c.append(f"copy {_num(ceil['copy_gbps'])} GB/s")
    for k in ("fp32", "bf16"):
        if f"matmul_{k}_tflops" in ceil:
            c.append(
                f"matmul {k} {_num(ceil[f'matmul_{k}_tflops'])} TFLOP/s "
                f"(n={ceil[f'matmul_{k}_n']}{', TF32 off' if k == 'fp32' else ''})"
            )
    if c:
        lines += ["Measured ceilings: " + "; ".join(c) + ".", ""]
    if result.get("description"):
        lines += [result["description"], ""]
    lines += table(result["records"], mode)
    compiles = [r for r in result["records"] if r.get("compile_s") is not None]
    if compiles:
        lines += [
            "",
            f"Compile time of torch.compile ({mode.first_call}, excluded): "
            + ", ".join(f"{r['case']}/{r['dtype']} {r['compile_s']:.1f} s" for r in compiles)
            + ".",
        ]
    if result.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"
