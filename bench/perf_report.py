"""Markdown tables for docs/performance.md from bench/results/perf_*.json.

    python bench/perf_report.py > /tmp/tables.md
"""

from __future__ import annotations

import json

from perf_common import RESULTS


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def m(s: dict, digits: int = 1, scale: float = 1.0) -> str:
    return f"{s['median'] * scale:.{digits}f} ({s['min'] * scale:.{digits}f}–{s['max'] * scale:.{digits}f})"


def header(d: dict) -> str:
    mc = d["machine"]
    return (f"`{d['command']}` — {mc['date_utc']}, {mc['cpus']} × {mc['cpu']}, load average "
            f"{mc['loadavg_1_5_15min'][0]:.2f} at the end, osr.train running: {mc['osr_train_running']}")


def model() -> None:
    d = load("perf_model")
    if not d:
        return
    print("### Model: onnxruntime vs torch eager\n\n" + header(d) + "\n")
    print("| threads | batch | torch eager img/s | ORT fp32 img/s | ORT int8 img/s | fp32 / torch | int8 / torch | int8 / fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    r = d["images_per_second"]
    for key, ratio in d["ratios"].items():
        t, b = key.split("/")
        print(f"| {t[1:]} | {b[1:]} | {m(r['torch_eager/' + key])} | {m(r['ort_fp32/' + key])} | "
              f"{m(r['ort_int8/' + key])} | {ratio['ort_fp32_over_torch']:.2f} | {ratio['ort_int8_over_torch']:.2f} | "
              f"{ratio['int8_over_fp32']:.2f} |")
    print(f"\nmax |logit| difference torch vs onnxruntime: {d['max_abs_logit_diff_torch_vs_ort']:.2e}\n")


def predictor() -> None:
    d = load("perf_predictor")
    if not d:
        return
    print("### Predictor vs bare decode + resize + onnxruntime\n\n" + header(d) + "\n")
    print("| model | images | per call | Predictor.classify_bytes img/s | bare loop img/s | ratio |")
    print("|---|---|---|---|---|---|")
    r = d["images_per_second"]
    for key, ratio in d["ratio_predictor_over_bare"].items():
        kind, source, b = key.split("/")
        print(f"| {kind} | {source} | {b[1:]} | {m(r['predictor/' + key])} | {m(r['bare/' + key])} | {ratio:.2f} |")
    print()


def service() -> None:
    d = load("perf_service")
    if not d:
        return
    print(f"### osr-serve over HTTP (concurrency {d['concurrency']}, client {d.get('client', 'python')})\n\n"
          + header(d) + "\n")
    print("| model | workers | images/request | req/s | img/s | p50 ms | p99 ms | errors / requests | bare predictor img/s | img/s ÷ bare |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, r in d["results"].items():
        kind, w, n = key.split("/")
        print(f"| {kind} | {w[1:]} | {n[3:]} | {m(r['requests_per_s'])} | {m(r['images_per_s'])} | {m(r['p50_ms'])} | "
              f"{m(r['p99_ms'])} | {r['errors']} / {r['requests']} | {m(r['bare_predictor_single_image_per_s'])} | "
              f"{m(r['ratio_to_bare_predictor'], 2)} |")
    best = {k: max(v["median"] for v in by.values()) for k, by in d["bare_predictor_single_image_per_s_by_threads"].items()}
    print("\nBare predictor at its fastest thread count, measured round robin after the loads: "
          + ", ".join(f"{k} {v:.1f} img/s" for k, v in best.items()) + ". Target (2 workers, 1 image/request): "
          + "; ".join(f"{k} {t['ratio_to_best_bare_predictor']:.2f} of the fastest bare predictor, "
                      f"{t['errors']} errors" for k, t in d["target"].items() if isinstance(t, dict)))
    print()


def batching() -> None:
    d = load("perf_batching")
    if not d:
        return
    print(f"### Dynamic batching in osr-serve ({d['model']}, {d['workers']} worker, --max-wait-ms {d['max_wait_ms']:g}, "
          f"client {d.get('client', 'python')})\n\n"
          + header(d) + "\n")
    print("| --max-batch | concurrency | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for key, r in d["results"].items():
        b, c = key.split("/")
        print(f"| {b[9:]} | {c[1:]} | {m(r['requests_per_s'])} | {m(r['p50_ms'])} | {m(r['p99_ms'])} | {r['errors']} |")
    print()
    for c, e in d["effect_of_batching"].items():
        print(f"- concurrency {c[1:]}: throughput ×{e['throughput_gain']:.2f}, p50 {e['p50_ms_added']:+.1f} ms, "
              f"p99 {e['p99_ms_added']:+.1f} ms")
    print()


def score_cli() -> None:
    d = load("perf_score_cli")
    if not d:
        return
    print(f"### osr-score on {d['images']} real CIFAR-10 JPEGs\n\n" + header(d) + "\n")
    print("| model | osr-score img/s | bare loop img/s | ratio |")
    print("|---|---|---|---|")
    r = d["images_per_second"]
    for kind, ratio in d["ratio_osr_score_over_bare"].items():
        print(f"| {kind} | {m(r['osr_score/' + kind])} | {m(r['bare_loop/' + kind])} | {ratio:.2f} |")
    print()


def triton() -> None:
    d = load("perf_triton")
    if not d:
        return
    print("### Triton (pip tritonserver, stand-in onnxruntime backend, CPU)\n\n" + header(d) + "\n")
    print("| model | protocol | clients | req/s | p50 ms | p99 ms | errors / requests | avg executed batch | req/s ÷ bare ORT b1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, r in d["results"].items():
        kind, proto, c = key.split("/")
        print(f"| {kind} | {proto} | {c[1:]} | {m(r['requests_per_s'])} | {m(r['p50_ms'])} | {m(r['p99_ms'])} | "
              f"{r['errors']} / {r['requests']} | {m(r['average_executed_batch'], 2)} | {r['ratio_to_bare_onnxruntime_b1']:.2f} |")
    bare = d["bare_onnxruntime_single_image_per_s"]
    print("\nbare in-process onnxruntime, batch 1: " + ", ".join(f"{k} {m(v)} img/s" for k, v in bare.items()) + "\n")


def train() -> None:
    d = load("perf_train")
    if not d:
        return
    print("### Training steps and data loading\n\n" + header(d) + "\n")
    print("| what (batch %d) | ms per batch | img/s |" % d["args"]["batch_size"])
    print("|---|---|---|")
    for name, s in d["seconds_per_batch"].items():
        print(f"| {name} | {m(s, 0, 1e3)} | {d['images_per_second'][name]:.0f} |")
    print(f"| AD average (p_mix 0.5) | | {d['images_per_second']['ad_average']:.0f} |")
    print(f"\nAD average / CE: {d['ratio_ad_average_to_ce']:.2f}; AD mixed / CE: {d['ratio_ad_mixed_to_ce']:.2f}; "
          f"data loading share of a CE step {d['data_loading_share_of_ce_step']:.0%}, of an AD step "
          f"{d['data_loading_share_of_ad_step']:.0%}"
          + (f"; with --batch-augment's batch functions instead, {d['batch_augment_loading_share_of_ce_step']:.0%} "
             "of a CE step" if "batch_augment_loading_share_of_ce_step" in d else "") + "\n")


if __name__ == "__main__":
    for section in (model, predictor, service, batching, score_cli, triton, train):
        section()
