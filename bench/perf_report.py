"""Markdown tables for docs/performance.md: the default model's from bench/results/perf-lite0/*.json
(perf_peer, perf_batching, perf_cost, perf_triton), then the old default's from
bench/results/perf_*.json.

    python bench/perf_report.py > /tmp/tables.md            # both
    python bench/perf_report.py --default                    # the default model's only
"""

from __future__ import annotations

import json
import statistics
import sys

from perf_common import RESULTS

LITE0 = RESULTS / "perf-lite0"


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


def load_lite0(name: str) -> dict | None:
    path = LITE0 / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def per_round(values: list[float], digits: int = 0) -> str:
    """The values of the rounds, in order: 'a / b'."""
    return " / ".join(f"{v:.{digits}f}" for v in values)


def windows_line(windows: list[dict]) -> str:
    paused = sorted({p["cmd"].split(" --")[0].rsplit("/", 1)[-1] for w in windows for p in w["paused_with_sigstop"]})
    others = {}
    for w in windows:
        for o in w["other_cpu_use"]:
            name = " ".join(o["cmd"].split()[:4])[:70]
            others[name] = others.get(name, 0.0) + o["cpu_s"]
    text = (f"{len(windows)} quiet windows of {min(w['seconds'] for w in windows):.0f}-"
            f"{max(w['seconds'] for w in windows):.0f} s; paused with SIGSTOP: "
            + (", ".join(paused) if paused else "nothing was running"))
    if others:
        text += "; other processes' CPU time in the windows: " + ", ".join(
            f"{name} {cpu:.1f} s" for name, cpu in sorted(others.items(), key=lambda kv: -kv[1]))
    return text


def peer() -> None:
    d = load_lite0("peer")
    if not d:
        return
    rounds = d["rounds"]
    print(f"### osr-serve, the peer and bare onnxruntime loops (one request = one {d['image']})\n\n"
          + header(d) + "\n")
    print(windows_line([r["window"] for r in rounds]) + f"; values of round 1 / round 2.\n")
    print("| model | connections | osr-serve req/s | peer req/s (its workers) | osr ÷ peer | osr p50 / p99 ms | "
          "peer p50 / p99 ms | errors osr, peer |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in rounds[0]["models"]:
        for c in d["connections"]:
            osr = [r["models"][kind]["osr"]["loads"][f"c{c}"] for r in rounds]
            peer_ = [r["models"][kind]["peer"]["loads"][f"c{c}"] for r in rounds]
            ratio = d["ratios"][f"{kind}/c{c}/osr_over_peer"]["per_round"]
            peer_cell = " / ".join("%.0f (%d)" % (x["requests_per_s"], x["workers"]) for x in peer_)
            latency = [" / ".join("%.1f, %.0f" % (x["p50_ms"], x["p99_ms"]) for x in xs) for xs in (osr, peer_)]
            print(f"| {kind} | {c} | {per_round([x['requests_per_s'] for x in osr])} | {peer_cell} | "
                  f"{per_round(ratio, 2)} | {latency[0]} | {latency[1]} | "
                  f"{sum(x['errors'] for x in osr)}, {sum(x['errors'] for x in peer_)} |")
    print("\n| model | bare single-image loop img/s | bare batched loop (32) img/s | osr-serve ÷ bare batched, "
          + ", ".join(f"{c} conn." for c in d["connections"]) + " |")
    print("|---|---|---|---|")
    for kind in rounds[0]["models"]:
        cells = "; ".join(per_round(d["ratios"][f"{kind}/c{c}/osr_over_bare_batched"]["per_round"], 2)
                          for c in d["connections"])
        print(f"| {kind} | {per_round([r['models'][kind]['bare_single'] for r in rounds])} | "
              f"{per_round([r['models'][kind]['bare_batched'] for r in rounds])} | {cells} |")
    if "int8" in rounds[0]["models"] and "fp32" in rounds[0]["models"]:
        print("\n| int8 ÷ fp32 | " + " | ".join(f"{c} conn." for c in d["connections"]) + " |")
        print("|---|" + "---|" * len(d["connections"]))
        for who in ("osr", "peer"):
            print(f"| {who} | " + " | ".join(per_round(d["ratios"][f"int8_over_fp32/c{c}/{who}"]["per_round"], 2)
                                             for c in d["connections"]) + " |")
        for bare in ("bare_single", "bare_batched"):
            print(f"| {bare.replace('_', ' ')} | " + per_round(d["ratios"][f"int8_over_fp32/{bare}"]["per_round"], 2)
                  + " |" * len(d["connections"]))
    print("\nMemory after the loads (MB, round 1; RSS / PSS, PSS shares pages between processes):\n")
    print("| model | service | processes (RSS / PSS each) | PSS total |")
    print("|---|---|---|---|")
    for kind, entry in rounds[0]["models"].items():
        for who in [k for k in entry if k == "osr" or k.startswith("peer_w")]:
            rows = entry[who]["memory"]
            cells = ", ".join(f"{x['rss_mb']:.0f} / {x['pss_mb']:.0f}" for x in rows)
            print(f"| {kind} | {who} | {cells} | {sum(x['pss_mb'] for x in rows):.0f} |")
    print()


def batching_lite0() -> None:
    d = load_lite0("batching")
    if not d:
        return
    print(f"### Dynamic batching defaults ({d['workers']} workers, one image per request)\n\n" + header(d) + "\n")
    print(windows_line(d["windows"]) + "; median (min–max) of the rounds.\n")
    conns = d["connections"]
    print("| model | --max-batch | --max-wait-ms | " + " | ".join(f"req/s, {c} conn." for c in conns) + " | "
          + " | ".join(f"p99 ms, {c} conn." for c in conns) + " | errors |")
    print("|---|---|---|" + "---|" * (2 * len(conns)) + "---|")
    settings = sorted({tuple(k.split("/")[:3]) for k in d["results"]},
                      key=lambda t: (t[0], int(t[1][1:]), float(t[2][1:])))
    for kind, b, w in settings:
        rows = [d["results"][f"{kind}/{b}/{w}/c{c}"] for c in conns]
        print(f"| {kind} | {b[1:]} | {w[1:]} | " + " | ".join(m(r["requests_per_s"], 0) for r in rows) + " | "
              + " | ".join(m(r["p99_ms"], 0) for r in rows) + f" | {sum(r['errors'] for r in rows)} |")
    print()


def cost() -> None:
    d = load_lite0("cost")
    if not d:
        return
    r = d["results"]
    print("### Cost growth\n\n" + header(d) + "\n")
    print(windows_line(d["windows"]) + "; median (min–max) of the rounds.\n")
    models = sorted({k.split("/")[1] for k in r if k.startswith(("size/", "batch/"))})
    if any(k.startswith("size/") for k in r):
        print(f"In-graph input size ({d['size_note']}); onnxruntime in-process:\n")
        print("| model | size | img/s b1, 1 thread | ms/image b1, 1 thread | img/s b32, 1 thread | img/s b1, 2 threads "
              "| img/s b32, 2 threads | b32 1-thread cost ÷ 128 px |")
        print("|---|---|---|---|---|---|---|---|")
        for kind in models:
            ref = r[f"size/{kind}/128px/t1/b32"]["images_per_s"]["median"]
            for size in d["sizes"]:
                x = lambda t, b: r[f"size/{kind}/{size}px/t{t}/b{b}"]  # noqa: E731
                print(f"| {kind} | {size} px | {m(x(1, 1)['images_per_s'], 0)} | {m(x(1, 1)['ms_per_call'], 2)} | "
                      f"{m(x(1, 32)['images_per_s'], 0)} | {m(x(2, 1)['images_per_s'], 0)} | "
                      f"{m(x(2, 32)['images_per_s'], 0)} | {ref / x(1, 32)['images_per_s']['median']:.2f} |")
        print()
    if any(k.startswith("batch/") for k in r):
        print("Batch size (the shipped graphs, 128 px inside):\n")
        print("| model | batch | img/s, 1 thread | ms per call, 1 thread | img/s, 2 threads | ms per call, 2 threads |")
        print("|---|---|---|---|---|---|")
        for kind in models:
            for b in d["batches"]:
                one, two = r[f"batch/{kind}/t1/b{b}"], r[f"batch/{kind}/t2/b{b}"]
                print(f"| {kind} | {b} | {m(one['images_per_s'], 0)} | {m(one['ms_per_call'], 1)} | "
                      f"{m(two['images_per_s'], 0)} | {m(two['ms_per_call'], 1)} |")
        print()
    if any(k.startswith("workers/") for k in r):
        print("osr-serve workers (threads per worker: 2 // workers, at least 1), one image per request:\n")
        conns = d["connections"]
        print("| model | workers | " + " | ".join(f"req/s, {c} conn." for c in conns) + " | "
              + " | ".join(f"p50 / p99 ms, {c} conn." for c in conns) + " | worker RSS / PSS MB | all processes PSS MB |")
        print("|---|---|" + "---|" * (2 * len(conns)) + "---|---|")
        for kind in sorted({k.split("/")[1] for k in r if k.startswith("workers/")}):
            for w in d["workers"]:
                loads = [r[f"workers/{kind}/w{w}/c{c}"] for c in conns]
                memory = r[f"memory/{kind}/w{w}"][0]
                workers = [x for x in memory if "spawn_main" in x["cmd"]] or [x for x in memory if "osr.serve" in x["cmd"]]
                print(f"| {kind} | {w} | " + " | ".join(m(x["requests_per_s"], 0) for x in loads) + " | "
                      + " | ".join(f"{x['p50_ms']['median']:.1f} / {x['p99_ms']['median']:.0f}" for x in loads) + " | "
                      + f"{statistics.mean(x['rss_mb'] for x in workers):.0f} / "
                      + f"{statistics.mean(x['pss_mb'] for x in workers):.0f} | {sum(x['pss_mb'] for x in memory):.0f} |")
        print()


def triton_lite0() -> None:
    d = load_lite0("triton")
    if not d:
        return
    print("### Triton (pip tritonserver, osr's stand-in Python backend running onnxruntime, CPU)\n\n" + header(d) + "\n")
    print(windows_line(d["windows"]) + "; median (min–max) of the rounds.\n")
    print("| model | protocol | clients | req/s | p50 ms | p99 ms | errors / requests | avg executed batch | "
          "req/s ÷ bare ORT b1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, x in d["results"].items():
        kind, proto, c = key.split("/")
        print(f"| {kind} | {proto} | {c[1:]} | {m(x['requests_per_s'])} | {m(x['p50_ms'])} | {m(x['p99_ms'])} | "
              f"{x['errors']} / {x['requests']} | {m(x['average_executed_batch'], 2)} | "
              f"{x['ratio_to_bare_onnxruntime_b1']:.2f} |")
    bare = d["bare_onnxruntime_single_image_per_s"]
    print("\nbare in-process onnxruntime, batch 1: " + ", ".join(f"{k} {m(v)} img/s" for k, v in bare.items()) + "\n")


if __name__ == "__main__":
    for section in (peer, batching_lite0, cost, triton_lite0):
        section()
    if "--default" not in sys.argv[1:]:
        print("## The old default's tables\n")
        for section in (model, predictor, service, batching, score_cli, triton, train):
            section()
