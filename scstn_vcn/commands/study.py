"""`scstn-vcn study`: train and evaluate Table 3's ablations (scstn_vcn.models.ABLATIONS) over several
seeds, optionally over several detection-error levels of the synthetic set, and report them.

    OUTPUT/study.json       the settings every run of this folder shares (a resumed study must match)
    OUTPUT/data[/e<E>]      the synthetic set(s), when no --data-root is given
    OUTPUT/runs/<variant>-s<seed>[-e<E>]/   each run's checkpoint, log.csv, config.yaml, train.log
    OUTPUT/results.csv      one row per (run, feature), appended as each run finishes
    OUTPUT/table3.md, .png  the ablation table (without --detection-error)
    OUTPUT/misalignment.md, .png   metrics against the detection error level (with --detection-error)
    OUTPUT/report[-e<E>]/   with --report: the evaluation report comparing the baseline with the full
                            model (the first seed's runs), query by query (scstn_vcn.report)

Resuming: the finished (variant, seed, level) runs are read back from results.csv and skipped; an
unfinished run starts over (its folder is cleared). Each run's rows go to the CSV in one write of
complete lines followed by fsync, and a trailing partial line (a write cut by a crash) is dropped
when the file is read, so the CSV never holds half a run.
"""

import contextlib
import csv
import io
import json
import os
import shutil
import time

from scstn_vcn.commands._common import add_traceback_arg
from scstn_vcn.engine.errors import UsageError

NAME = "study"
HELP = "Table 3's ablations over seeds (and detection-error levels), with tables and figures"

COLUMNS = (
    "variant",
    "seed",
    "detection_error",
    "feature",
    "rank1",
    "rank5",
    "rank10",
    "mAP",
    "mINP",
    "params",
    "epochs",
    "seconds",
)
# Settings that change what a run measures: a resumed study must use the same ones.
SETTING_KEYS = ("config", "overrides", "data_root", "epochs", "num_identities", "test_identities", "fused")
# The demo's 120 training identities (the default set's) with a 4x larger test split: 480 test
# identities, 960 queries, so rank-1 moves by about 1 point per 10 flipped queries instead of 4.
# Without --test-identities, TEST_FRACTION of the identities (whole swap pairs) are test identities.
DEFAULT_IDENTITIES = 600
TEST_FRACTION = 0.8


def default_test_identities(num_identities):
    return min(max(2 * int(num_identities * TEST_FRACTION / 2), 2), num_identities - 2)


# ----------------------------------------------------------------------------------- arguments


def parse_variants(text):
    from scstn_vcn.models import ABLATIONS

    if text is None or text.strip() == "all":
        return list(ABLATIONS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in ABLATIONS]
    if not names or unknown:
        raise UsageError(
            f"--variants: unknown variant(s) {', '.join(unknown) or '(none given)'}; expected all or a "
            f"comma-separated list of {', '.join(ABLATIONS)}"
        )
    return [n for n in ABLATIONS if n in names]  # the paper's order, each once


def parse_seeds(text):
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--seeds: expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds:
        raise UsageError(f"--seeds: expected at least one integer seed, got {text!r}")
    return list(dict.fromkeys(seeds))


def parse_levels(text):
    """--detection-error L1,L2,... -> sorted floats, or None when not given (no sweep)."""
    from scstn_vcn.data.synthetic_render import MAX_DETECTION_ERROR

    if text is None:
        return None
    try:
        levels = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(
            f"--detection-error: expected comma-separated numbers such as 0,0.2,0.4, got {text!r}"
        ) from None
    bad = [lv for lv in levels if not 0.0 <= lv <= MAX_DETECTION_ERROR]
    if not levels or bad:
        raise UsageError(f"--detection-error: levels must be in [0, {MAX_DETECTION_ERROR:g}], got {text!r}")
    return sorted(set(levels))


def level_text(level):
    return "" if level is None else f"{level:g}"


def run_name(variant, seed, level):
    return f"{variant}-s{seed}" + ("" if level is None else f"-e{level:g}")


# ----------------------------------------------------------------------------------- results.csv


def read_results(path):
    """The complete rows of results.csv (a trailing partial line is dropped, and cut from the file)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as handle:
        data = handle.read()
    if data and not data.endswith(b"\n"):
        # A write cut short: keep the complete lines only, atomically.
        data = data[: data.rfind(b"\n") + 1]
        _write_atomic(path, data)
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    return [r for r in rows if r.get("variant") and r.get("seconds")]


def append_rows(path, rows):
    """Append `rows` (dicts over COLUMNS) in one write, with the header if the file is new; fsync."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        writer.writeheader()
    writer.writerows(rows)
    with open(path, "a") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())


def _write_atomic(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def finished_runs(rows):
    return {(r["variant"], int(r["seed"]), r["detection_error"]) for r in rows}


# ----------------------------------------------------------------------------------- one run


def _check_settings(output, settings):
    path = os.path.join(output, "study.json")
    if os.path.exists(path):
        with open(path) as handle:
            saved = json.load(handle)
        # (An empty or false value and an absent one are the same setting.)
        changed = [k for k in SETTING_KEYS if (saved.get(k) or None) != (settings.get(k) or None)]
        if changed:
            what = ", ".join(f"{k} {saved.get(k)!r} there, {settings.get(k)!r} now" for k in changed)
            raise UsageError(
                f"--output {output}: holds a study with other settings ({what}); "
                "use another folder or the same settings"
            )
        return
    _write_atomic(path, (json.dumps(settings, indent=1) + "\n").encode())


def _prepare_data(args, output, levels):
    """{level: data root} (level None: the default set or --data-root)."""
    from scstn_vcn.data import make_synthetic

    if args.data_root is not None:
        return {None: args.data_root}
    roots = {}
    for level in levels:
        root = os.path.join(output, "data") if level is None else os.path.join(output, "data", f"e{level:g}")
        kwargs = {} if level is None else {"detection_error": level}
        # The data's seed stays 0: the study's seeds vary initialisation and batch order only, so
        # every run of a level sees the same images.
        make_synthetic(
            root,
            num_identities=args.num_identities,
            num_test_identities=args.test_identities,
            seed=0,
            verbose=True,
            **kwargs,
        )
        roots[level] = root
    return roots


def _run_config(args, variant, seed, data_root, run_dir):
    from scstn_vcn.configs import load_config

    overrides = list(args.overrides or []) + [
        (["data", "root"], data_root),
        (["train", "output"], run_dir),
        (["model", "ablation"], variant),
        (["train", "seed"], seed),
        (["train", "eval_every"], 0),
    ]
    if args.data_root is None:
        overrides.append((["data", "name"], "synthetic"))
    if args.epochs is not None:
        overrides.append((["train", "epochs"], args.epochs))
    if args.fused:
        overrides.append((["train", "fused"], True))
    return load_config(args.config, overrides)


def train_and_evaluate(config, log_path):
    """Train one configuration from scratch and evaluate it; its own output goes to `log_path`.
    Returns ({feature: {metric: percent}}, parameters without classifiers)."""
    from scstn_vcn.engine.checkpoint import unwrap
    from scstn_vcn.engine.evaluator import to_percent
    from scstn_vcn.engine.trainer import Trainer

    with open(log_path, "w") as log, contextlib.redirect_stdout(log):
        say = lambda *a, **k: print(*a, **k, flush=True)  # noqa: E731  (goes to the run's log)
        trainer = Trainer(config, progress=False, say=say)
        try:
            trainer.fit()
            results, _, _ = trainer.evaluate()
            params = unwrap(trainer.model).num_parameters()
        finally:
            trainer.close()
        results = to_percent(results)
        print(json.dumps(results))
    return results, params


def run(args):
    from scstn_vcn.commands.study_report import write_reports

    variants = parse_variants(args.variants)
    seeds = parse_seeds(args.seeds)
    if args.report and not set(REPORT_PAIR) <= set(variants):
        raise UsageError(f"--report compares {' and '.join(REPORT_PAIR)}: --variants must include both")
    levels = parse_levels(args.detection_error)
    if levels is not None and args.data_root is not None:
        raise UsageError("--detection-error: needs the synthetic set (it re-renders it per level); drop --data-root")
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs: expected a positive integer, got {args.epochs}")
    if args.num_identities < 4:
        raise UsageError(f"--num-identities: expected at least 4, got {args.num_identities}")
    if args.test_identities is None:
        args.test_identities = default_test_identities(args.num_identities)
    if args.test_identities % 2 or not 2 <= args.test_identities <= args.num_identities - 2:
        raise UsageError(
            f"--test-identities: expected an even number in 2..{args.num_identities - 2} (of "
            f"--num-identities {args.num_identities}), got {args.test_identities}"
        )
    output = os.path.abspath(args.output)
    os.makedirs(os.path.join(output, "runs"), exist_ok=True)
    settings = {
        "config": args.config,
        "overrides": list(args.overrides or []),
        "data_root": args.data_root and os.path.abspath(args.data_root),
        "epochs": args.epochs,
        "num_identities": None if args.data_root else args.num_identities,
        "test_identities": None if args.data_root else args.test_identities,
        "fused": bool(args.fused),
    }
    _check_settings(output, settings)
    level_list = levels if levels is not None else [None]
    roots = _prepare_data(args, output, level_list)

    csv_path = os.path.join(output, "results.csv")
    done = finished_runs(read_results(csv_path))
    plan = [(lv, v, s) for lv in level_list for v in variants for s in seeds]
    todo = [p for p in plan if (p[1], p[2], level_text(p[0])) not in done]
    print(
        f"study: {len(plan)} runs ({len(variants)} variants x {len(seeds)} seeds"
        + (f" x {len(level_list)} levels" if levels is not None else "")
        + f"), {len(plan) - len(todo)} done, "
        f"{len(todo)} to run; results in {csv_path}",
        flush=True,
    )
    bar = None
    if not args.no_progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="study runs", unit="run", dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for index, (level, variant, seed) in enumerate(todo):
            name = run_name(variant, seed, level)
            run_dir = os.path.join(output, "runs", name)
            shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished earlier attempt starts over
            os.makedirs(run_dir)
            config = _run_config(args, variant, seed, roots[level], run_dir)
            began = time.perf_counter()
            results, params = train_and_evaluate(config, os.path.join(run_dir, "train.log"))
            seconds = round(time.perf_counter() - began, 1)
            rows = [
                {
                    "variant": variant,
                    "seed": seed,
                    "detection_error": level_text(level),
                    "feature": feature,
                    **{m: metrics.get(m, "") for m in ("rank1", "rank5", "rank10", "mAP", "mINP")},
                    "params": params,
                    "epochs": config["train"]["epochs"],
                    "seconds": seconds,
                }
                for feature, metrics in results.items()
            ]
            append_rows(csv_path, rows)
            fusion = results.get("fusion") or next(iter(results.values()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{name}: rank-1 {fusion['rank1']:.1f}")
            else:
                left = (time.perf_counter() - start) / (index + 1) * (len(todo) - index - 1)
                print(
                    f"[{len(plan) - len(todo) + index + 1}/{len(plan)}] {name}: rank-1 {fusion['rank1']:.2f} "
                    f"mAP {fusion['mAP']:.2f} ({seconds:.0f}s; about {left / 60:.0f} min left)",
                    flush=True,
                )
    finally:
        if bar is not None:
            bar.close()
    rows = [
        r
        for r in read_results(csv_path)
        if r["variant"] in variants
        and int(r["seed"]) in seeds
        and r["detection_error"] in {level_text(lv) for lv in level_list}
    ]
    for path in write_reports(output, rows, variants, seeds, levels, _parameter_counts(args, variants, roots)):
        print(f"wrote {path}")
    if args.report:
        for path in write_compare_reports(args, output, seeds[0], level_list, roots):
            print(f"wrote {path}")
    return 0


# The paper's ranked-list figure: the baseline against the full model on the same queries.
REPORT_PAIR = ("baseline", "full")


def write_compare_reports(args, output, seed, levels, roots):
    """OUTPUT/report[-e<E>]/index.html per level: the baseline's and the full model's runs of `seed`,
    evaluated again from their checkpoints with per-query records, on one page."""
    from scstn_vcn.commands.eval_report import model_info, run_of
    from scstn_vcn.engine.builders import build_dataset_from_config
    from scstn_vcn.engine.evaluator import evaluate_model, write_results
    from scstn_vcn.engine.model_file import build_inference_model, open_model_source
    from scstn_vcn.engine.runtime import resolve_device
    from scstn_vcn.report import write_report

    written = []
    for level in levels:
        folder = os.path.join(output, "report" + ("" if level is None else f"-e{level:g}"))
        runs, dataset = [], None
        for variant in REPORT_PAIR:
            run_dir = os.path.join(output, "runs", run_name(variant, seed, level))
            config = _run_config(args, variant, seed, roots[level], run_dir)
            config["eval"]["report"] = folder  # per-query records and theta
            checkpoint = os.path.join(run_dir, "checkpoint.pth")
            device = resolve_device(config["train"]["device"])
            model = build_inference_model(open_model_source(checkpoint), config).to(device).eval()
            dataset = dataset or build_dataset_from_config(config)
            results, _, _ = evaluate_model(model, dataset, config, device)
            extra = {"checkpoint": checkpoint, "variant": variant, "seed": seed}
            payload = write_results(os.path.join(folder, f"results-{variant}.json"), results, extra)
            runs.append(run_of(results, payload, model_info(config, checkpoint, device), variant))
        written.append(write_report(folder, runs, dataset.query, dataset.gallery))
    return written


def _parameter_counts(args, variants, roots):
    """{variant: parameters without classifiers} for the variants and the baseline (for 'added')."""
    from scstn_vcn.engine.builders import build_model_from_config

    counts = {}
    root = next(iter(roots.values()))
    for variant in dict.fromkeys(list(variants) + ["baseline"]):
        config = _run_config(args, variant, 0, root, os.devnull)
        counts[variant] = build_model_from_config(config, None, pretrained=False).num_parameters()
    return counts


def add_arguments(p):
    """The `study` sub-command's arguments."""
    p.add_argument("--config", default="demo", help="a preset or YAML file (default: demo, the CPU recipe)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value for every run (repeatable)",
    )
    p.add_argument("--data-root", help="a data set folder (default: synthesise the demo's set under OUTPUT/data)")
    p.add_argument("--variants", default="all", help="all, or comma-separated names of scstn_vcn.models.ABLATIONS")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    p.add_argument("--epochs", type=int, help="train.epochs for every run (default: the config's)")
    p.add_argument(
        "--num-identities",
        type=int,
        default=DEFAULT_IDENTITIES,
        help=f"identities to synthesise (default {DEFAULT_IDENTITIES})",
    )
    p.add_argument(
        "--test-identities",
        type=int,
        default=None,
        help="how many of them are test identities (even; default 4/5: with 600, the demo's 120 "
        "training identities and 4x its test split)",
    )
    p.add_argument(
        "--detection-error",
        metavar="L1,L2,...",
        help="sweep: one synthetic set per detection-error level (e.g. 0,0.1,0.2,0.3,0.4)",
    )
    p.add_argument("--output", required=True, help="study folder (results.csv, runs/, reports)")
    p.add_argument("--fused", action="store_true", help="run every op with its fused backend")
    p.add_argument("--no-progress", action="store_true", help="one line per run instead of a progress bar")
    p.add_argument(
        "--report",
        action="store_true",
        help="also write OUTPUT/report/index.html: the baseline and the full model (first seed) query by query",
    )
    add_traceback_arg(p)
