"""`make bench`: run every benchmark in one invocation, write bench/results/<name>.json and bench/results/README.md,
then the pictures drawn from that JSON (bench/plots: bench/results/*.png).

Each benchmark prints one JSON object and carries its own baseline run side by side, so the table shows ratios
measured on the same machine in the same minute. Absolute numbers on a shared 2-core machine mean little.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.jsonfmt import dumps
from bench.plots import machine, measured_now
from bench.plots.results import draw_all

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PY = sys.executable

BENCHES: dict[str, list[str]] = {
    "publish": [PY, "-m", "bench.publish", "10"],
    "workers": [PY, "bench/bench_workers.py", "--images", "200"],
    "workers-concurrency-2": [PY, "bench/bench_workers.py", "--images", "200", "--concurrency", "2"],
    "operator": [PY, "bench/bench_operator.py"],
    "operator-real": [PY, "bench/bench_operator_real.py", "--sizes", "1000,5000"],
    "reaction": [PY, "bench/bench_reaction.py", "--bursts", "20"],
    "policy-replay": [PY, "-m", "bench.replay"],
    "sdk": [PY, "bench/bench_sdk.py", "--tasks", "1000"],
    "uploads": [PY, "bench/bench_uploads.py", "--parallel", "16"],
    "closed-loop": [PY, "bench/bench_closed_loop.py", "--tasks", "1000"],
    "s3": [PY, "bench/bench_s3.py", "--images", "200", "--rounds", "2"],
    "push": [PY, "bench/bench_push.py", "--subscribers", "1000", "10000"],
    "push-fanout": [PY, "bench/bench_fanout.py", "--subscribers", "1000", "10000"],
}


TIMEOUTS = {"operator-real": 3600}  # 6,000 QueueWorkers made and measured on the real control plane


def _run(name: str, cmd: list[str]) -> dict[str, Any]:
    start = time.monotonic()
    timeout = TIMEOUTS.get(name, 900)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ})
    if r.returncode:
        return {"error": f"exit {r.returncode}", "stderr": r.stderr[-3000:]}
    out = r.stdout[r.stdout.index("{") :]
    data: dict[str, Any] = json.loads(out)
    data["wall_seconds"] = round(time.monotonic() - start, 1)
    data["machine"], data["measured"] = machine(), measured_now()  # the pictures' captions
    return data


def _rows(results: dict[str, dict[str, Any]]) -> list[str]:
    rows = ["| benchmark | figure | queueworker | baseline | ratio |", "|---|---|---|---|---|"]
    rows += _publish_rows(results.get("publish", {}))
    for key in ("workers", "workers-concurrency-2"):
        w = results.get(key, {})
        if "worker_images_per_s" in w:
            rows.append(
                f"| {key} | images/s (1024x768 JPEG -> 256 px) | {w['worker_images_per_s']} | bare Pillow "
                f"{w['bare_pillow_images_per_s']} | {w['worker_to_bare_ratio']} |"
            )
    o = results.get("operator", {})
    for size in o.get("results", []):
        b, k = size["median_per_tick"]["batched"], size["median_per_tick"]["per_queueworker"]
        ratio = size["ratio_per_queueworker_over_batched"]
        n = size["queueworkers"]
        rows.append(
            f"| operator, {n} QueueWorkers | management API calls per tick | {b['calls']:g} | per-QueueWorker "
            f"(KEDA pattern) {k['calls']:g} | {ratio['calls']:g}x fewer |"
        )
        rows.append(
            f"| operator, {n} QueueWorkers | operator CPU s per tick; reconcile latency s | {b['cpu_s']}; "
            f"{b['reconcile_latency_s']} | {k['cpu_s']}; {k['reconcile_latency_s']} | {ratio['cpu_s']}x less CPU |"
        )
    rows += _operator_real_rows(results.get("operator-real", {}))
    rt = results.get("reaction", {})
    if "operator_prometheus_depth" in rt:
        r, m = rt["operator_prometheus_depth"], rt["operator_management_depth"]
        seen_m, seen_p = rt["management_api_sees_burst"], rt["prometheus_endpoint_sees_burst"]
        rows.append(
            f"| reaction, {rt['bursts']} bursts | burst -> spec.replicas, p50 / p99 s | {r['p50']} / {r['p99']} | "
            f"management-API depth {m['p50']} / {m['p99']} | {rt['ratios']['prometheus_over_management_reaction_p50']}"
            f" / {rt['ratios']['prometheus_over_management_reaction_p99']} |"
        )
        rows.append(
            f"| reaction | broker shows the burst, p50 s: Prometheus endpoint vs management API | {seen_p['p50']} | "
            f"{seen_m['p50']} | {round(seen_p['p50'] / max(seen_m['p50'], 1e-3), 2)} |"
        )
        if "operator_rabbitmq4_prometheus_only" in rt:
            r4 = rt["operator_rabbitmq4_prometheus_only"]
            rows.append(
                f"| reaction, RabbitMQ 4.x (collector off) | burst -> spec.replicas, p50 / p99 s | {r4['p50']} / "
                f"{r4['p99']} | RabbitMQ 3.10, same operator {r['p50']} / {r['p99']} | "
                f"{rt['ratios']['rabbitmq4_over_3_10_reaction_p50']} |"
            )
    rp = results.get("policy-replay", {})
    for trace, runs in rp.get("traces", {}).items():
        base = runs[0]
        for r in runs[1:]:
            rows.append(
                f"| replay {trace} | {r['name']}: p95 wait s, replica-s | {r['p95_wait']}, "
                f"{r['replica_seconds']:.0f} | KEDA+HPA {base['p95_wait']}, {base['replica_seconds']:.0f} | "
                f"{r['p95_wait_vs_keda']}, {r['replica_seconds_vs_keda']} |"
            )
    rows += _closed_loop_rows(results.get("closed-loop", {}))
    rows += _sdk_rows(results.get("sdk", {}))
    rows += _upload_rows(results.get("uploads", {}))
    rows += _s3_rows(results.get("s3", {}))
    rows += _push_rows(results.get("push", {}))
    for name, data in results.items():
        if "error" in data:
            rows.append(f"| {name} | FAILED: {data['error']} | | | |")
    return rows


def _publish_rows(p: dict[str, Any]) -> list[str]:
    """POST /v1/emails against its ceilings (the no-op endpoint, the pipelined broker) and the context rows."""
    if "api" not in p:
        return []
    api, noop, r = p["api"], p["noop_endpoint"], p["ratios"]
    peak = api["closed_loop_64"]
    rows = [
        f"| publish | confirmed tasks/s, 64 connections, 1 process | {peak['ok_per_s']} | no-op FastAPI endpoint "
        f"(same HTTP work) {noop['closed_loop_64']['ok_per_s']} | {r['api_vs_noop_endpoint']} |",
        f"| publish | CPU us per request | {peak['cpu_us_per_request']} | no-op endpoint "
        f"{noop['closed_loop_64']['cpu_us_per_request']} | "
        f"{round(noop['closed_loop_64']['cpu_us_per_request'] / max(peak['cpu_us_per_request'], 0.1), 2)} |",
        *(
            [
                f"| publish | load generator's CPU us per request (not the ceiling) | "
                f"{peak['loadgen_cpu_us_per_request']} | no-op round {lg} | |"
            ]
            if (lg := noop["closed_loop_64"].get("loadgen_cpu_us_per_request")) is not None
            else []
        ),
        f"| publish | p50 / p99 ms at {api['offered_per_s']:g}/s offered (half the no-op rate); failed | "
        f"{api['open_loop']['p50_ms']} / {api['open_loop']['p99_ms']}; {api['open_loop']['errors']} | no-op endpoint "
        f"{noop['open_loop']['p50_ms']} / {noop['open_loop']['p99_ms']}; {noop['open_loop']['errors']} | |",
    ]
    if "api_2_processes" in p:
        rows.append(
            f"| publish | confirmed tasks/s, 2 API processes | {p['api_2_processes']['closed_loop_64']['ok_per_s']} | "
            f"1 process {peak['ok_per_s']} | {r['api_2_processes_vs_api']} |"
        )
    if "broker_pipelined" in p:
        b = p["broker_pipelined"]
        rows.append(
            f"| publish | vs the broker: 64 confirms in flight on one channel (pika; aio-pika) | {peak['ok_per_s']} | "
            f"{b['pika_pipelined']['confirmed_per_s']}; {b['aio_pika_64']['confirmed_per_s']} | "
            f"{r['api_vs_broker_pipelined']}; {r['api_vs_broker_aio_pika_64']} |"
        )
    if "seed_pattern" in p:
        rows.append(
            f"| publish | context: seed pattern (connection per request, unconfirmed) | {peak['ok_per_s']} | "
            f"{p['seed_pattern']['closed_loop_64']['ok_per_s']} | {r['api_vs_seed_throughput']} |"
        )
    if "bare_pika_confirms" in p:
        rows.append(
            f"| publish | context: synchronous pika loop, one confirm at a time | {peak['ok_per_s']} | "
            f"{p['bare_pika_confirms']['confirmed_per_s']} | {r['api_vs_bare_pika_confirms']} |"
        )
    return rows


def _closed_loop_rows(c: dict[str, Any]) -> list[str]:
    """The closed loop's burst, autoscaling against the same burst at fixed min replicas."""
    if len(c.get("runs", [])) < 2:
        return []
    auto, fixed = (run["figures"] for run in c["runs"])
    key = "replica_seconds_until_drained_and_back"
    return [
        f"| closed loop, {c['tasks']:,} emails | drain s; replica-s until drained and back at min | "
        f"{auto['drain_seconds']}; {auto[key]} (peak {auto['peak_workers']} workers) | fixed {c['min_replicas']} "
        f"worker {fixed['drain_seconds']}; {fixed[key]} | {c['ratios']['autoscaling_over_fixed_drain']}; "
        f"{c['ratios']['autoscaling_over_fixed_replica_seconds']} |"
    ]


def _push_rows(p: dict[str, Any]) -> list[str]:
    """Status to N subscribers of one API: pushed from the broker against each stream polling the store."""
    rows = []
    by = {(r["subscribers"], r["mode"]): r for r in p.get("results", [])}
    for n in sorted({n for n, _ in by}):
        push, poll = by.get((n, "push"), {}), by.get((n, "poll"), {})
        if "p99_ms" not in push:
            continue
        ratio = p.get("ratios", {}).get(str(n), {})
        base = (
            f"polling stream {poll['p50_ms']} / {poll['p99_ms']}"
            if "p99_ms" in poll
            else "polling: " + str(poll.get("error", "not run"))[:60]
        )
        rows.append(
            f"| push, {n:,} subscribers | store write -> client, p50 / p99 ms | {push['p50_ms']} / {push['p99_ms']} | "
            f"{base} | {ratio.get('p99_push_over_poll', '')} |"
        )
        poll_tx = poll.get("store_tx_per_s", "")
        rows.append(
            f"| push, {n:,} subscribers | store transactions/s meanwhile | {push['store_tx_per_s']} | "
            f"polling {poll_tx} | |"
        )
    return rows


def _sdk_rows(s: dict[str, Any]) -> list[str]:
    """A no-op SDK task through send() and through the worker, each against bare pika doing the same AMQP work."""
    if "send_per_s" not in s:
        return []
    return [
        f"| sdk | no-op tasks/s through `send()` (validate, rows, confirmed publish) | {s['send_per_s']} | "
        f"bare pika confirmed publish {s['bare_publish_per_s']} | {s['send_to_bare_ratio']} |",
        *(
            [
                f"| sdk | no-op tasks/s through `await send_async()`, 64 coroutines on one loop | "
                f"{s['send_async_per_s']} | `send()` {s['send_per_s']} | {s['send_async_to_send_ratio']} |"
            ]
            if "send_async_per_s" in s
            else []
        ),
        f"| sdk | no-op tasks/s through the worker (validate, run, status, ack) | {s['worker_per_s']} | "
        f"bare pika consumer acking {s['bare_consumer_per_s']} | {s['worker_to_bare_ratio']} |",
    ]


def _s3_rows(s: dict[str, Any]) -> list[str]:
    if "workers" not in s:
        return []
    w, u = s["workers"], s["uploads"]
    return [
        f"| s3 | image worker images/s on S3 (SeaweedFS) vs the local directory | {w['s3_images_per_s']} | directory "
        f"{w['directory_images_per_s']} | {w['ratio_s3_over_directory']} |",
        f"| s3 | API peak RSS added by one {u['file_mib']} MiB upload, MiB: S3; directory | "
        f"{u['s3']['added_by_the_upload_mib']}; {u['directory']['added_by_the_upload_mib']} | file read whole "
        f"{u['directory_whole_file_baseline']['added_by_the_upload_mib']} | "
        f"{u['ratios']['s3_added_over_whole_file']}; {u['ratios']['directory_added_over_whole_file']} |",
    ]


def _operator_real_rows(o: dict[str, Any]) -> list[str]:
    """The real operator process on the real control plane, beside issue 16's figures of the kopf-daemon design.
    A size that stopped early shows what it measured, and why it stopped."""
    rows = []
    for r in o.get("results", []):
        head = f"| operator (real process, control plane), {r['queueworkers']} QueueWorkers"
        t = r.get("today", {})
        idle, busy, burst = r.get("idle", {}), r.get("busy100", {}), r.get("burst_to_replicas_s", {})
        stages, classic, cores = r.get("burst_stages_s", {}), r.get("burst_classic_s", {}), r.get("startup_cores", {})

        def was(key: str, t: dict[str, Any] = t) -> str:
            return f"daemon per QueueWorker {t[key]}" if key in t else ""

        got = [
            ("all have a status, s; 429s", "all_status_s" in r,
             f"{r.get('all_status_s')}; {r.get('throttled_429_startup')}",
             f"{was('all_status_s')}; {t.get('throttled_429', '')}"),
            ("idle cores; RSS MiB", bool(idle), f"{idle.get('cores')}; {idle.get('rss_mib')}",
             f"{was('idle_cores')}; {t.get('rss_mib', '')}"),
            ("idle: the broker's cores meanwhile (its share of the reads)", "broker_cores" in idle,
             f"{idle.get('broker_cores')}", ""),
            ("decisions per QueueWorker per s; tick interval p50 / p99 s", bool(idle),
             f"{idle.get('decisions_per_qw_per_s')}; {idle.get('tick_interval_p50_s')} / "
             f"{idle.get('tick_interval_p99_s')}", was("decisions_per_qw_per_s")),
            ("burst -> spec.replicas p50 / p99 s (quorum queues)", bool(burst),
             f"{burst.get('p50')} / {burst.get('p99')}", was("burst_p50_s")),
            ("burst stages p50 s: publish -> read start; read; -> decision; replica write", bool(stages),
             "; ".join(str(stages.get(k, {}).get("p50")) for k in ("to_read_start", "read", "to_decision", "write")),
             ""),
            ("burst -> spec.replicas p50 / p99 s, classic queues (3.10 emits their depth 1 s after the publish)",
             bool(classic), f"{classic.get('p50')} / {classic.get('p99')}", ""),
            ("start-up: status writes sent by then; kube-apiserver CPU ms per status write", "startup_writes" in r,
             f"{r.get('startup_writes', {}).get('status')}; {r.get('apiserver_ms_per_status_write')}", ""),
            ("start-up cores: operator; kube-apiserver; broker; whole machine", bool(cores),
             f"{cores.get('operator')}; {cores.get('kube-apiserver')}; {cores.get('broker')}; {cores.get('machine')}",
             ""),
            ("100 busy queues: cores; status writes/s; per busy QueueWorker", bool(busy),
             f"{busy.get('cores')}; {busy.get('status_writes_per_s')}; {busy.get('status_writes_per_s_per_busy_qw')}",
             f"{was('busy100_cores')}; {t.get('busy100_status_writes_per_s', '')}"),
            ("restart: replica writes (flapping); 429s; status writes", "restart_replica_writes" in r,
             f"{r.get('restart_replica_writes')}; {r.get('restart_throttled_429')}; "
             f"{r.get('restart_status_writes', 'not counted')}", ""),
        ]  # fmt: skip
        rows += [f"{head} | {what} | {value} | {before} | |" for what, ok, value, before in got if ok]
        if "error" in r:
            rows.append(f"{head} | stopped early | {str(r['error'])[:200]} | | |")
    return rows


def _upload_rows(u: dict[str, Any]) -> list[str]:
    """The API's bounded image check against the full decode it used to do (and the workers still do)."""
    if "api" not in u:
        return []
    check, full = u["api"]["check"], u["api"]["full_decode"]
    rows = [
        f"| uploads | API peak RSS MiB, {u['parallel']} parallel 40 MP PNG uploads (default budgets) | "
        f"{check['peak_rss_mib']} | full decode {full['peak_rss_mib']} | "
        f"{u['ratios']['api_peak_rss_check_over_full_decode']} |",
        f"| uploads | seconds until all {u['parallel']} answered | {check['all_answered_s']} | full decode "
        f"{full['all_answered_s']} | {u['ratios']['api_all_answered_check_over_full_decode']} |",
    ]
    for name, f in u["formats"].items():
        c, d, r = f["check"], f["full_decode"], f["ratio_check_over_full"]
        rows.append(
            f"| uploads, 40 MP {name} | check: s; peak RSS MiB | {c['seconds']}; {c['peak_rss_added_mib']} | "
            f"full decode {d['seconds']}; {d['peak_rss_added_mib']} | {r['seconds']}; {r['peak_rss_added_mib']} |"
        )
    return rows


def main() -> int:
    only = sys.argv[1:]
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for name, cmd in BENCHES.items():
        if only and name not in only:  # `python -m bench NAME...`: the others' latest results stay in the table
            saved = RESULTS / f"{name}.json"
            if saved.exists():
                results[name] = json.loads(saved.read_text())
            continue
        print(f"== {name}", flush=True)
        results[name] = _run(name, cmd)
        (RESULTS / f"{name}.json").write_text(dumps(results[name]) + "\n")
    pictures = draw_all(RESULTS)
    table = [
        "# Benchmark results",
        "",
        f"Latest `make bench` on {time.strftime('%Y-%m-%d')} ({machine()}). Ratios are against the baseline run in "
        "the same invocation; see bench/*.py for what each baseline is.",
        "",
        *_rows(results),
        "",
        "Pictures drawn from the same JSON (bench/plots; `python -m bench.plots` redraws them):",
        "",
        *(f"![{png.stem}]({png.name})\n" for png in pictures),
    ]
    (RESULTS / "README.md").write_text("\n".join(table))
    print("\n".join(table))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
