"""Run configurations: the built-in defaults, YAML presets shipped beside this file, and
command-line overrides.

A configuration is a nested dict with the sections model / data / loss / optim / train / eval.
`load_config(name_or_path, overrides)` starts from DEFAULTS, merges the preset (a file path or
the name of a YAML file in this folder, with or without ".yaml"), then each "section.key=value"
override; values are parsed as YAML scalars so `--set optim.lr=1e-3` gives a float.
A preset may name another preset in `_base_`, merged first, so the six paper presets share one
recipe file.
"""

import copy
import os
import re

import yaml

PRESET_DIR = os.path.dirname(os.path.abspath(__file__))

# The paper's recipe (Sec. 4.2) is the default; presets only change the data set / variant.
DEFAULTS = {
    "model": {
        "backbone": "resnet50",
        "variant": "O",
        # Backbone weights: imagenet | imagenet-v2 (torchvision's, from the torch.hub cache), a state-dict
        # file path, or None (from scratch). The paper presets say imagenet.
        "pretrained": None,
        "ablation": None,  # a key of scstn_vcn.models.ABLATIONS, or None for the full model
        "kwargs": {},  # extra Table 3 keyword arguments for build_model
    },
    "data": {
        # One data set, or several trained on as one: a list (or "a,b"), with a list of roots of the same length.
        "name": "market1501",
        "root": None,
        "height": 384,
        "width": 128,
        "num_identities": 16,  # P
        "num_instances": 6,  # K
        "workers": 4,
        "kwargs": {},  # extra keyword arguments of the data set class, e.g. MSMT17's combine_trainval
        # Refuse a data set in which a query's identity has no gallery image (default: report it, and
        # evaluation counts such queries as invalid: "valid queries: N of M").
        "strict_queries": False,
    },
    "loss": {"alpha": 0.5, "beta": 0.5, "gamma": 1.0e-7, "use_rll": True, "kwargs": {}},
    "optim": {
        "lr": 5.0e-4,
        "weight_decay": 5.0e-4,
        "betas": [0.9, 0.999],
        "warmup_epochs": 30,
        "step_size": 80,
        "step_gamma": 0.1,
    },
    "train": {
        "epochs": 300,
        "seed": 0,
        "amp": "bf16",  # bf16 | fp16 | off; autocast runs on CUDA only
        "fused": False,
        "kernels": None,  # triton | native; None = triton on CUDA, native on CPU
        "device": "auto",
        "output": "runs/scstn_vcn",
        "eval_every": 0,  # evaluate every N epochs during training (0: only at the end)
        "deterministic": True,  # deterministic algorithms on the CPU
        "sync_bn": False,
        "max_steps_per_epoch": 0,  # 0: the whole sampler epoch (a cap is for smoke runs)
        "threads": 0,  # torch intra-op CPU threads; 0 keeps torch's default
    },
    "eval": {
        "batch_size": 128,
        "workers": 4,
        "chunk_size": 4096,
        # k-reciprocal re-ranking (Zhong et al. 2017): adds "+rk" rows (scstn_vcn.metrics.rerank)
        "rerank": False,
        "rerank_k1": 20,
        "rerank_k2": 6,
        "rerank_lambda": 0.3,
        # how re-ranking finds the k1 + 1 nearest items (scstn_vcn.metrics.neighbours): exact (the blocked
        # pass), faiss-flat, faiss-ivf (approximate, for galleries of hundreds of thousands and more;
        # rerank_nprobe lists searched, rerank_codes the IVF's vector codes), faiss (any faiss index:
        # rerank_faiss_index its factory string, e.g. "PCA64,HNSW32", rerank_faiss_params its search
        # parameters, e.g. "efSearch=128"), or auto: exact up to 150,000 items (and on CUDA), faiss-ivf above
        # when faiss is installed
        "rerank_neighbours": "auto",
        "rerank_nprobe": 32,
        "rerank_codes": "SQ8",
        "rerank_faiss_index": None,
        "rerank_faiss_params": None,
        # alpha-query expansion (fast-reid's aqe): adds "+qe" rows, before re-ranking when both are on
        "query_expansion": False,
        "qe_k": 10,
        "qe_alpha": 3.0,
        "qe_times": 1,
        # Data sets evaluated after training besides the training sets' own query/gallery (cross-domain):
        # "name:root" strings or {name: ..., root: ...} mappings.
        "targets": [],
        # an evaluation report (scstn_vcn.report): the folder train / study write it to, or None; and how
        # many gallery items of each query's ranked list it keeps
        "report": None,
        "report_topk": 10,
        # verification (scstn_vcn.metrics.verification): the TPR and distance threshold at these target FPRs
        # over all query-gallery pairs, for every row; [] turns it off
        "fprs": [1e-4, 1e-3, 1e-2],
    },
}

SECTIONS = tuple(DEFAULTS)


class ConfigError(ValueError):
    """A preset or an override that cannot be applied; the message names it."""


def list_presets():
    return sorted(f[: -len(".yaml")] for f in os.listdir(PRESET_DIR) if f.endswith(".yaml"))


def resolve_preset(name_or_path):
    """Path of a preset given a file path or a preset name."""
    if os.path.isfile(name_or_path):
        return name_or_path
    name = name_or_path[: -len(".yaml")] if name_or_path.endswith(".yaml") else name_or_path
    candidate = os.path.join(PRESET_DIR, name + ".yaml")
    if os.path.isfile(candidate):
        return candidate
    raise ConfigError(
        f"--config {name_or_path!r}: no such file and no such preset; presets: {', '.join(list_presets())}"
    )


def merge(base, update, where="config"):
    """Recursively merge `update` into a copy of `base`; unknown sections are refused."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if where == "config" and key not in SECTIONS:
            raise ConfigError(f"{where}: unknown section {key!r}; expected one of {', '.join(SECTIONS)}")
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "kwargs":
            out[key] = merge(out[key], value, where=f"{where}.{key}")
        elif isinstance(value, dict) and key == "kwargs":
            out[key] = {**out.get(key, {}), **value}
        else:
            if where != "config" and key not in out:
                raise ConfigError(f"{where}: unknown key {key!r}; expected one of {', '.join(sorted(out))}")
            out[key] = copy.deepcopy(value)
    return out


def read_preset(path, _seen=()):
    """The preset's dict, with its `_base_` chain merged underneath it."""
    if path in _seen:
        raise ConfigError(f"{path}: `_base_` chain loops back to itself")
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    base_name = data.pop("_base_", None)
    if base_name is None:
        return data
    base_path = os.path.join(os.path.dirname(path), base_name)
    if not os.path.isfile(base_path):
        base_path = resolve_preset(base_name)
    base = read_preset(base_path, _seen + (path,))
    return merge_raw(base, data)


def merge_raw(base, update):
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_raw(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text):
    """ "section.key=value" -> (["section", "key"], parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. optim.lr=3e-4")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {text!r}: the key must be section.key (sections: {', '.join(SECTIONS)})")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        # PyYAML (YAML 1.1) reads "1e-3" as a string; numbers are what such a value means here.
        try:
            value = float(value)
        except ValueError:
            pass
    return parts, value


def apply_override(config, parts, value, text=None):
    """Set config[parts[0]][parts[1]]... = value, refusing unknown sections/keys (except under kwargs)."""
    text = text or ".".join(parts)
    node = config
    for depth, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"--set {text}: unknown key {'.'.join(parts[: depth + 1])!r}")
        node = node[part]
    last = parts[-1]
    if last not in node and parts[-2] != "kwargs":
        raise ConfigError(
            f"--set {text}: unknown key {'.'.join(parts)!r}; {'.'.join(parts[:-1])} has {', '.join(sorted(node))}"
        )
    node[last] = value
    return config


def load_config(name_or_path=None, overrides=()):
    """DEFAULTS <- preset <- overrides ("section.key=value" strings or (parts, value) pairs)."""
    config = copy.deepcopy(DEFAULTS)
    layers = []
    if name_or_path:
        path = resolve_preset(name_or_path)
        preset = read_preset(path)
        config = merge(config, preset)
        layers.append((f"--config {path}", set(flat_keys(preset))))
    apply_overrides(config, overrides)
    layers.append((COMMAND_LINE, override_keys(overrides)))
    validate(config, origin_of(layers))
    return config


def config_from_saved(saved, overrides=(), source="the saved configuration"):
    """DEFAULTS <- a config saved with a run (a checkpoint's "config") <- overrides, validated: keys
    added to DEFAULTS after the run was saved get their defaults; `source` names the file in errors.
    This keeps the saved training recipe (train --resume of one's own run); to run a model from a file,
    config_from_model takes from it only what defines the model."""
    layers = [(source, set(flat_keys(saved))), (COMMAND_LINE, override_keys(overrides))]
    return validate(apply_overrides(merge(DEFAULTS, saved), overrides), origin_of(layers))


def apply_overrides(config, overrides):
    """Apply "section.key=value" strings or (parts, value) pairs to `config` in place; returns it."""
    for item in overrides:
        if isinstance(item, str):
            parts, value = parse_override(item)
            apply_override(config, parts, value, text=item)
        else:
            apply_override(config, *item)
    return config


def validate(config, source="the configuration"):
    """Check the values whose mistakes would otherwise surface deep inside training. `source` (a string, or a
    function of a "section.key" name) says where a value came from, in validate_runtime's errors."""
    validate_runtime(config, source)
    model, data, train, optim = config["model"], config["data"], config["train"], config["optim"]
    if model["variant"] not in ("O", "M"):
        raise ConfigError(f"model.variant must be 'O' or 'M', got {model['variant']!r}")
    pretrained = model.get("pretrained")
    if pretrained is not None and not isinstance(pretrained, (str, os.PathLike)):
        raise ConfigError(f"model.pretrained must be imagenet, imagenet-v2, a file path or null, got {pretrained!r}")
    if pretrained in ("imagenet", "imagenet-v2") and model["backbone"] not in ("resnet18", "resnet34", "resnet50"):
        raise ConfigError(
            f"model.pretrained={pretrained}: the {model['backbone']!r} backbone has no ImageNet weights; "
            f"set model.pretrained=null to train it from scratch"
        )
    if train["amp"] is False:  # YAML 1.1 reads an unquoted `off` as false
        train["amp"] = "off"
    if train["amp"] not in ("bf16", "fp16", "off"):
        raise ConfigError(f"train.amp must be bf16, fp16 or off, got {train['amp']!r}")
    if train["kernels"] not in (None, "triton", "native"):
        raise ConfigError(f"train.kernels must be triton, native or null, got {train['kernels']!r}")
    for section, key in (
        ("data", "height"),
        ("data", "width"),
        ("data", "num_identities"),
        ("data", "num_instances"),
        ("train", "epochs"),
        ("optim", "step_size"),
    ):
        value = config[section][key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{section}.{key} must be a positive integer, got {value!r}")
    if not isinstance(optim["warmup_epochs"], int) or optim["warmup_epochs"] < 0:
        raise ConfigError(f"optim.warmup_epochs must be a non-negative integer, got {optim['warmup_epochs']!r}")
    if not (isinstance(optim["lr"], (int, float)) and optim["lr"] > 0):
        raise ConfigError(f"optim.lr must be a positive number, got {optim['lr']!r}")
    if not isinstance(data["strict_queries"], bool):
        raise ConfigError(f"data.strict_queries must be true or false, got {data['strict_queries']!r}")
    validate_data_sets(data)
    eval_targets(config)
    validate_eval(config["eval"])
    return config


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_or_same(value):
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def validate_eval(section):
    """The eval section's report settings (validate_runtime checks its sizes, workers, re-ranking and query
    expansion settings)."""
    if not _is_int(section["report_topk"]) or section["report_topk"] < 1:
        raise ConfigError(f"eval.report_topk must be a positive integer, got {section['report_topk']!r}")
    if section["report"] is not None and not (isinstance(section["report"], str) and section["report"].strip()):
        raise ConfigError(f"eval.report must be a folder path or null, got {section['report']!r}")
    fprs = section["fprs"]
    if isinstance(fprs, (list, tuple)):
        # YAML 1.1 reads 1e-3 as a string, in a list too; the number is what it means here.
        fprs = section["fprs"] = [_number_or_same(f) for f in fprs]
    if not isinstance(fprs, (list, tuple)) or not all(_is_number(f) and 0 < f < 1 for f in fprs):
        raise ConfigError(f"eval.fprs must be a list of target false positive rates in (0, 1), got {fprs!r}")


def _names(value, key):
    """A data.name / data.root value as a list of non-empty strings ("a,b" is two)."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    items = [str(item).strip() if isinstance(item, (str, os.PathLike)) else item for item in items]
    if not items or not all(isinstance(item, str) and item for item in items):
        raise ConfigError(f"data.{key} must be a name or a list of names without empty entries, got {value!r}")
    return items


def validate_data_sets(data):
    """data.name and data.root: one data set, or as many roots as names (lists, or comma-separated strings,
    which become lists here). A single name keeps its root whole, commas and all."""
    names = _names(data["name"], "name")
    data["name"] = names[0] if len(names) == 1 else names
    root = data["root"]
    if root is None or len(names) == 1 and isinstance(root, (str, os.PathLike)):
        return data
    roots = _names(root, "root")
    if len(roots) != len(names):
        raise ConfigError(
            f"data.root gives {len(roots)} folder(s) for the {len(names)} data set(s) of data.name "
            f"({', '.join(names)}); give one root per name, in the same order (--dataset a,b --data-root A,B)"
        )
    data["root"] = roots[0] if len(roots) == 1 else roots
    return data


def data_sets(config):
    """[(name, root)] of the data section: the data set(s) a run trains on (root None when not set)."""
    data = config["data"]
    names = data["name"] if isinstance(data["name"], list) else [data["name"]]
    roots = data["root"] if isinstance(data["root"], list) else [data["root"]] * len(names)
    return list(zip(names, roots))


def eval_targets(config):
    """[(name, root)] of eval.targets, each given as "name:root" or {name: ..., root: ...}."""
    targets = config["eval"].get("targets") or []
    if isinstance(targets, (str, dict)):
        targets = [targets]
    if not isinstance(targets, list):
        raise ConfigError(f"eval.targets must be a list of 'name:root' or {{name, root}} entries, got {targets!r}")
    out = []
    for entry in targets:
        if isinstance(entry, str) and ":" in entry:
            name, root = (part.strip() for part in entry.split(":", 1))
        elif isinstance(entry, dict) and set(entry) == {"name", "root"}:
            name, root = str(entry["name"]).strip(), str(entry["root"]).strip()
        else:
            name = root = ""
        if not name or not root:
            raise ConfigError(
                f"eval.targets: {entry!r} is not a target; expected 'name:root' (e.g. 'market1501:/data/market') "
                "or a mapping with the keys name and root"
            )
        out.append((name, root))
    return out


# ------------------------------------------------------------------------------ runtime settings
# How a run runs (threads, worker processes, batch and chunk sizes, the device, folders, the evaluation's
# re-ranking and query expansion) is the user's: presets, --set and flags, or for `train --resume` the
# user's own checkpoint; a model file never sets it (config_from_model). It is checked here whatever its
# source, so that a value that would fork 100,000 workers or start 100,000 threads stops with one line
# naming the key, what was expected and where the value came from.

COMMAND_LINE = "--set or a command-line flag"
PER_CPU = 4  # threads and worker processes: at most this many per CPU of the machine (oversubscribed beyond)
MAX_BATCH = 4096  # images per forward pass: 4,096 inputs of 384 x 128 are 2.4 GB of float32 already
MAX_CHUNK = 1 << 20  # query rows per block of the distance matrix
MAX_QE_TIMES = 100  # rounds of query expansion (fast-reid's default is 1)
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def cpu_limit():
    """The most threads or worker processes a setting may ask for on this machine: PER_CPU per CPU."""
    return PER_CPU * (os.cpu_count() or 1)


# "section.key" -> (smallest, largest or a function giving it, what the largest is); integers only.
RUNTIME_INTEGERS = {
    "train.threads": (0, cpu_limit, f"{PER_CPU} per CPU; 0 keeps torch's default"),
    "data.workers": (0, cpu_limit, f"{PER_CPU} per CPU; 0 loads in the main process"),
    "eval.workers": (0, cpu_limit, f"{PER_CPU} per CPU; 0 loads in the main process"),
    "eval.batch_size": (1, MAX_BATCH, "images per forward pass"),
    "eval.chunk_size": (1, MAX_CHUNK, "query rows per distance block"),
    # k1's real bound, the number of items - 1, is known only at evaluation (RerankConfig.check_items).
    "eval.rerank_k1": (1, None, ""),
    "eval.rerank_nprobe": (1, None, ""),
    "eval.qe_k": (1, None, ""),
    "eval.qe_times": (1, MAX_QE_TIMES, "rounds of query expansion"),
}


def flat_keys(tree, prefix=""):
    """The "section.key" names a nested config (or part of one) sets; kwargs dicts count as one key."""
    for key, value in tree.items():
        if isinstance(value, dict) and key != "kwargs":
            yield from flat_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def override_keys(overrides):
    """The "section.key" names that overrides ("section.key=value" strings or (parts, value) pairs) set."""
    return {".".join(parse_override(item)[0] if isinstance(item, str) else item[0]) for item in overrides}


def origin_of(layers, default="the defaults"):
    """A function "section.key" -> where its value came from: the last of `layers` ((description, set of
    "section.key" names)) that sets it, else `default`."""

    def origin(key):
        return next((where for where, keys in reversed(layers) if key in keys), default)

    return origin


def _runtime_error(source, key, expected, value):
    where = source(key) if callable(source) else source
    return ConfigError(f"{key} must be {expected}, got {value!r} (from {where})")


def check_runtime_integer(key, value, source="the configuration"):
    """`value` if it is an integer in the range RUNTIME_INTEGERS gives `key`, else a ConfigError naming the
    key, the range and `source`."""
    low, high, why = RUNTIME_INTEGERS[key]
    high = high() if callable(high) else high
    if not _is_int(value) or value < low or high is not None and value > high:
        expected = f"an integer >= {low}" if high is None else f"an integer from {low} to {high} ({why})"
        raise _runtime_error(source, key, expected, value)
    return value


def validate_runtime(config, source="the configuration"):
    """Check how the run runs: thread and worker counts, batch and chunk sizes, the device, the folders and the
    evaluation's re-ranking / query expansion settings (RerankConfig's and QueryExpansionConfig's ranges). One
    ConfigError names the key, what was expected and where the value came from (`source`: a string, or a
    function of the "section.key" name)."""
    for name in RUNTIME_INTEGERS:
        section, key = name.split(".")
        check_runtime_integer(name, config[section][key], source)
    train, data, section = config["train"], config["data"], config["eval"]
    device = train["device"]
    if device is not None and not (isinstance(device, str) and DEVICE_PATTERN.fullmatch(device)):
        raise _runtime_error(source, "train.device", "auto, cpu, cuda or cuda:N", device)
    if not (isinstance(train["output"], (str, os.PathLike)) and os.fspath(train["output"]).strip()):
        raise _runtime_error(source, "train.output", "a folder path", train["output"])
    roots = data["root"] if isinstance(data["root"], (list, tuple)) else [data["root"]]
    if data["root"] is not None and not all(isinstance(root, (str, os.PathLike)) for root in roots):
        raise _runtime_error(source, "data.root", "a folder path, a list of them, or null", data["root"])
    for key in ("rerank", "query_expansion"):
        if not isinstance(section[key], bool):
            raise _runtime_error(source, f"eval.{key}", "true or false", section[key])
    k1, k2 = section["rerank_k1"], section["rerank_k2"]
    if not _is_int(k2) or not 1 <= k2 <= k1 + 1:
        raise _runtime_error(source, "eval.rerank_k2", f"an integer from 1 to eval.rerank_k1 + 1 = {k1 + 1}", k2)
    lam = section["rerank_lambda"]
    if not _is_number(lam) or not 0 <= lam <= 1:
        raise _runtime_error(source, "eval.rerank_lambda", "a number in [0, 1]", lam)
    backend = section["rerank_neighbours"]
    if backend not in ("auto", "exact", "faiss-flat", "faiss-ivf", "faiss"):
        raise _runtime_error(source, "eval.rerank_neighbours", "auto, exact, faiss-flat, faiss-ivf or faiss", backend)
    factory = section["rerank_faiss_index"]
    if (backend == "faiss") != (factory is not None) or not (factory is None or isinstance(factory, str)):
        expected = "a faiss factory string such as PCA64,HNSW32 (with eval.rerank_neighbours faiss, and only then)"
        raise _runtime_error(source, "eval.rerank_faiss_index", expected, factory)
    params = section["rerank_faiss_params"]
    if not (params is None or (isinstance(params, str) and re.fullmatch(r"(\w+=[\d.e+-]+)(,\w+=[\d.e+-]+)*", params))):
        raise _runtime_error(source, "eval.rerank_faiss_params", "faiss parameters such as efSearch=128", params)
    codes = section["rerank_codes"]
    if not (isinstance(codes, str) and re.fullmatch(r"Flat|SQ8|SQ4|SQfp16|PQ\d+", codes)):
        raise _runtime_error(source, "eval.rerank_codes", "faiss IVF codes: Flat, SQ8, SQ4, SQfp16 or PQ<m>", codes)
    alpha = section["qe_alpha"]
    if not _is_number(alpha) or not 0 <= alpha < float("inf"):
        raise _runtime_error(source, "eval.qe_alpha", "a finite number >= 0", alpha)
    return config


# ------------------------------------------------------------------------------ what a model file defines
# The model (MODEL_IDENTITY_KEYS), the input size it was trained at and the training data's name; nothing of
# how the recipient's run runs. model.pretrained (the backbone's initial weights, a path on the author's
# machine) is not part of it: the file's own weights replace them.
MODEL_SETTINGS = {"model": ("backbone", "variant", "ablation", "kwargs"), "data": ("name", "height", "width")}


def model_settings(config):
    """The part of a (saved) configuration that defines the model: MODEL_SETTINGS's keys it has."""
    if not isinstance(config, dict):
        raise ConfigError(f"the configuration is a {type(config).__name__}, expected a mapping of sections")
    out = {}
    for section, keys in MODEL_SETTINGS.items():
        saved = config.get(section, {})
        if not isinstance(saved, dict):
            raise ConfigError(f"its {section!r} section is a {type(saved).__name__}, expected a mapping")
        out[section] = {key: copy.deepcopy(saved[key]) for key in keys if key in saved}
    return out


def config_from_model(saved, overrides=(), source="the model file"):
    """DEFAULTS <- the model settings of a saved configuration (a model file's or a checkpoint's) <- overrides,
    validated: how the run runs comes from the defaults and the overrides only, never from the file."""
    settings = model_settings(saved)
    layers = [(source, set(flat_keys(settings))), (COMMAND_LINE, override_keys(overrides))]
    return validate(apply_overrides(merge(DEFAULTS, settings), overrides), origin_of(layers))


def dump_config(config):
    return yaml.safe_dump(config, sort_keys=False)


# The identity of a model: a checkpoint can only be loaded into a model built the same way.
MODEL_IDENTITY_KEYS = ("backbone", "variant", "ablation", "kwargs")


def model_identity(config, num_classes):
    ident = {key: config["model"][key] for key in MODEL_IDENTITY_KEYS}
    ident["num_classes"] = int(num_classes)
    # The map size fixes SC-STN's FC1 (H*W inputs) and VCN's kernels (H taps).
    ident["input_size"] = [int(config["data"]["height"]), int(config["data"]["width"])]
    return ident
