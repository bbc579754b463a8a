"""The benchmark's table: one row per (variant, case), then the per-layer profile."""

HEADER = (f"{'variant':<22}{'case':<10}{'GFLOP':>8}{'ms/call':>9}{'median ms/img':>15}{'min ms/img':>12}"
          f"{'img/s':>8}{'GFLOP/s':>9}{'% sgemm':>9}{'peak MiB':>10}{'rel err':>9}")


FP32_MARK = "*"  # a low-precision variant's GFLOP/s against the FP32 sgemm
FP32_NOTE = (f"{FP32_MARK} low-precision variant: GFLOP/s vs the FP32 sgemm, not a peak of its "
             "own precision (can exceed 100%)")


def format_row(r):
    if "error" in r:
        return f"{r['variant']:<22}{r['case']:<10}  failed: {r['error']}"
    if "fraction_of_sgemm" in r:
        frac = f"{100 * r['fraction_of_sgemm']:.0f}%"
    elif "fraction_of_fp32_sgemm" in r:
        frac = f"{100 * r['fraction_of_fp32_sgemm']:.0f}%{FP32_MARK}"
    else:
        frac = "-"
    err = f"{r['max_rel_error_vs_tf']:.1e}" if "max_rel_error_vs_tf" in r else "-"
    return (f"{r['variant']:<22}{r['case']:<10}{r['gflop']:>8.1f}{r['median_ms_per_call']:>9.0f}"
            f"{r['median_ms_per_image']:>15.1f}"
            f"{r['min_ms_per_image']:>12.1f}{r['images_per_s']:>8.2f}{r['gflops']:>9.1f}"
            f"{frac:>9}{r['run_peak_mib']:>10.0f}{err:>9}")


def _onoff(value):
    return {True: "on", False: "off"}.get(value, "TensorFlow's default")


def format_cpu(machine):
    """The CPU block: the model, the flags that decide, the TensorFlow version,
    oneDNN in the inference and training workers, then each choice and its source."""
    workers = machine.get("onednn_workers") or {}
    choices = machine.get("choices") or {}
    onednn = []
    for task in ("inference", "training"):
        ran = workers.get(task)
        if ran is None:  # no worker of this kind ran: what the environment or the choice says
            env = {"1": True, "0": False}.get(machine.get("onednn_env"))
            chosen = {row["choice"]: row["value"] for row in choices.get(task, [])}
            ran = env if env is not None else {"on": True, "off": False}.get(
                chosen.get(f"oneDNN for {task}"))
        onednn.append(f"{_onoff(ran)} for {task}")
    tf_version = f", TensorFlow {machine['tensorflow']}" if machine.get("tensorflow") else ""
    kind = f" ({machine['kind']})" if machine.get("kind") else ""
    lines = [f"CPU {machine['cpu'] or 'unknown'}{kind}, {machine['cores']} cores{tf_version}; "
             f"flags {' '.join(machine['features']) or 'none of note'}; "
             f"oneDNN {', '.join(onednn)}; bfloat16 {machine['bfloat16']}; int8 {machine['int8']}"]
    for task, rows in choices.items():
        for row in rows:
            if row["choice"].startswith("oneDNN") and task != "inference":
                continue  # the same oneDNN rows in every task's record
            label = row["choice"] if row["choice"].startswith("oneDNN") else \
                f"{row['choice']} ({task})"
            lines.append(f"  {label:<28}{row['value']:<12}{row['source']}")
    return lines


def format_flops_by_backbone(table):
    """Lines of forward GFLOP per case, one column per backbone (none without a table)."""
    if not table or not any(table.values()):
        return []
    backbones = list(table)
    cases = list(table[backbones[0]])
    lines = [f"{'forward GFLOP':<22}" + "".join(f"{b:>10}" for b in backbones)]
    lines += [f"{case:<22}" + "".join(f"{table[b][case]:>10.1f}" for b in backbones)
              for case in cases]
    return lines


def format_report(report):
    lines = []
    machine = report.get("machine") or {}
    if "features" in machine:
        lines.extend(format_cpu(machine))
    sgemm = report.get("sgemm")
    if sgemm:
        lines.append(f"sgemm 4096^3, NumPy BLAS, {report['threads']} threads: "
                     f"{sgemm['median_gflops']:.1f} GFLOP/s (median), {sgemm['best_gflops']:.1f} best")
    lines.extend(format_flops_by_backbone(report.get("flops_by_backbone")))
    lines.append(HEADER)
    lines.extend(format_row(r) for r in report["results"])
    if any("fraction_of_fp32_sgemm" in r for r in report["results"]):
        lines.append(FP32_NOTE)
    profile = report.get("profile")
    if profile and "layers" in profile:
        lines.append("")
        lines.append(f"profile {profile['case']} ({profile['variant']}): "
                     f"{profile['traced_ms']:.0f} ms traced; slowest layer "
                     f"{profile['layers'][0]['layer']}")
        lines.append(f"{'layer':<12}{'ms':>8}{'time %':>8}{'FLOP %':>8}{'GFLOP/s':>9}")
        for row in profile["layers"]:
            lines.append(f"{row['layer']:<12}{row['ms']:>8.1f}{100 * row['time_share']:>8.1f}"
                         f"{100 * row['flop_share']:>8.1f}{row['gflops']:>9.0f}")
        lines.append("op kinds: " + ", ".join(f"{k} {v:.1f} ms" for k, v in
                                              list(profile["op_kinds_ms"].items())[:8]))
    elif profile:
        lines.append(f"profile failed: {profile.get('error')}")
    return "\n".join(lines)

