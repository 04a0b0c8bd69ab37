"""Galleries of hundreds of thousands to millions of items: evaluation and re-ranking from memory-mapped
feature folders, with exact and approximate (faiss) neighbours; time and the process's own memory.

Run by hand, step by step, each resumable (not part of `pytest benchmarks`; CI runs small versions of the
same code paths as tests). Big data goes to --work (default /work/bigdata/large_gallery).

    B=benchmarks/large_gallery.py; W=/work/bigdata/large_gallery
    # 1. render distractors with the synthetic generator (new identities, 128x64) and extract them with a
    #    model trained on the synthetic set, through the sharded extraction; times per 1,000 images
    python $B render-extract --checkpoint CKPT --images 3000 --json extract.json
    # 2. the structure of those features: principal components for 90% of the variance and the IVF
    #    neighbour recall curve; then the generator's settings that match them (same statistics measured)
    python $B calibrate --json calibrate.json
    # 2b. the identities' spread s_w that gives the Market part (3,368 x 15,913, no distractors) a trained
    #     model's difficulty: the paper's Market-1501 mAP, 88.6 (rank-1 96.1); bisection, other settings kept
    python $B difficulty --json difficulty.json
    # 3. Market+500k (3,368 x 515,913) and 3,368 x 2,362,447 feature folders of 2,048-d float32 from it
    python $B generate --gallery 515913 --name market500k
    # 4. evaluation from the memory-mapped folders (plain; re-ranked with exact / faiss neighbours)
    python $B eval --name market500k --chunk-size 128 --json market500k-plain.json
    python $B eval --name market500k --chunk-size 128 --rerank --neighbours faiss-ivf --nprobe 16 --json ...
    python $B eval --name market500k --rerank --neighbours faiss --factory PCA64,HNSW32 --params efSearch=128 ...

Generator (why not isotropic clusters: see the README's "Large galleries"): each identity p has a centre
a_p ~ N(0, I_r) in an r-dimensional subspace (a random orthonormal basis B of R^2048), each image
x = B (a_p + s_w z) + s_n e with z ~ N(0, I_r), e ~ N(0, I_2048): identities in a low-dimensional
subspace, images spread around them, a little isotropic noise. calibrate chooses (r, s_w, s_n) whose
features have the extracted features' principal-component count for 90% of the variance and their IVF
recall curve (recall@21 at nprobe 1, 4, 16, nlist about 4 sqrt(n)) on the same number of items. The
extracted features come from the demo model (a few epochs on the synthetic set: rank-1 near 10% on them),
whose identities overlap far more than a trained network's; so difficulty then sets s_w alone, keeping r
and s_n, to the paper's Market-1501 mAP on the generated Market part.

Memory: a thread samples /proc/self/status (RssAnon, RssFile, VmRSS) every 0.2 s; the peaks are reported
with VmHWM. RssAnon is the process's own memory; RssFile counts the page cache of the memory-mapped
features the process touches, which the kernel reclaims under pressure.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import threading
import time

import numpy as np
import torch

from scstn_vcn.metrics.feature_store import FeatureStoreWriter, open_features, write_json_atomically
from scstn_vcn.metrics.neighbours import NeighbourSearch, default_nlist

DIM = 2048
NUM_QUERY = 3368
MARKET_GALLERY = 15913
MARKET_IDS = 751
CAMERAS = 6
RECALL_K = 21
PROBES = (1, 4, 16)


# ------------------------------------------------------------------------------------------ measuring


class MemorySampler:
    """Peaks of RssAnon, RssFile and VmRSS (kB) from /proc/self/status, sampled every ``period`` s."""

    FIELDS = ("RssAnon", "RssFile", "VmRSS", "VmHWM")

    def __init__(self, period=0.2):
        self.period, self.peak, self._stop = period, dict.fromkeys(self.FIELDS, 0), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read():
        out = {}
        with open("/proc/self/status") as handle:
            for line in handle:
                key = line.split(":")[0]
                if key in MemorySampler.FIELDS:
                    out[key] = int(line.split()[1])
        return out

    def _run(self):
        while not self._stop.is_set():
            for key, value in self.read().items():
                self.peak[key] = max(self.peak[key], value)
            time.sleep(self.period)

    def __enter__(self):
        self.start = self.read()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        for key, value in self.read().items():
            self.peak[key] = max(self.peak[key], value)

    def report(self):
        gib = 1 / 2**20
        return {
            "peak_rss_anon_gib": round(self.peak["RssAnon"] * gib, 3),
            "peak_rss_file_gib": round(self.peak["RssFile"] * gib, 3),
            "peak_rss_gib": round(self.peak["VmHWM"] * gib, 3),
            "rss_anon_at_start_gib": round(self.start["RssAnon"] * gib, 3),
            "sample_period_s": self.period,
        }


def machine():
    load = os.getloadavg()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_1_5_15": [round(v, 2) for v in load],
        "niceness": os.nice(0),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }


def use_threads(threads):
    """torch's and (when installed) faiss's threads."""
    torch.set_num_threads(threads)
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(threads)


def save(path, payload):
    if path:
        payload = dict(payload, machine=machine())
        write_json_atomically(path, payload)
        print(f"wrote {path}")


# ------------------------------------------------------------------------------------------ structure


def pca_components(x, fraction=0.9):
    """How many principal components hold ``fraction`` of the variance of rows ``x`` (L2-normalised first,
    as the cosine distance sees them)."""
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x = x - x.mean(0)
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False) ** 2
    return int(np.searchsorted(np.cumsum(s) / s.sum(), fraction) + 1)


def recall_curve(x, k=RECALL_K, probes=PROBES, sample=500, seed=0):
    """recall@k of faiss IVF<nlist>,Flat (inner product of the normalised rows, nlist about 4 sqrt(n)) at
    each nprobe, against exact neighbours of ``sample`` rows."""
    import faiss

    x = np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), dtype=np.float32)
    n = x.shape[0]
    rows = np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False)
    exact = np.argsort(-(x[rows] @ x.T), axis=1, kind="stable")[:, :k]
    nlist = default_nlist(n)
    index = faiss.index_factory(x.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    out = {}
    for nprobe in probes:
        faiss.extract_index_ivf(index).nprobe = nprobe
        _, found = index.search(x[rows], k)
        out[str(nprobe)] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact)]))
    return {"nlist": nlist, "k": k, "recall_at_nprobe": out}


def profile(x):
    return {"items": int(x.shape[0]), "dim": int(x.shape[1]), "pca90": pca_components(x), "ivf": recall_curve(x)}


# ------------------------------------------------------------------------------------------ generator


class Generator:
    """x = B (a_p + s_w z) + s_n e (module docstring), deterministic in (seed, identity, image row)."""

    def __init__(self, rank, spread, noise, dim=DIM, seed=0):
        self.rank, self.spread, self.noise, self.dim, self.seed = rank, spread, noise, dim, seed
        basis = np.random.default_rng([seed, 0]).standard_normal((dim, rank))
        self.basis = np.linalg.qr(basis)[0].astype(np.float32).T  # (r, dim), orthonormal rows

    def centres(self, pids):
        return np.stack([np.random.default_rng([self.seed, 1, int(p)]).standard_normal(self.rank) for p in pids])

    def images(self, pids, start):
        """Features of images start, start + 1, ... whose identities are ``pids``."""
        rng = np.random.default_rng([self.seed, 2, int(start)])
        latent = self.centres(pids) + self.spread * rng.standard_normal((len(pids), self.rank))
        x = latent.astype(np.float32) @ self.basis
        x += self.noise * rng.standard_normal((len(pids), self.dim), dtype=np.float32)
        return x


def labels(num_gallery, seed=0):
    """(q_pids, q_camids, g_pids, g_camids): Market-1501's shape (3,368 queries of 750 identities, 15,913
    gallery images of them and other identities) plus distractors, new identities of about 5 images."""
    rng = np.random.default_rng([seed, 3])
    q_pids = np.sort(rng.integers(1, MARKET_IDS, NUM_QUERY))
    g_pids = np.concatenate(
        [
            np.resize(np.repeat(np.arange(1, MARKET_IDS), 20), MARKET_GALLERY - 1163),  # ~19.7 an identity
            MARKET_IDS + np.arange(1163),  # Market's distractor boxes: identities of their own
            2 * MARKET_IDS + 1163 + np.arange(num_gallery - MARKET_GALLERY) // 5,
        ]
    )[:num_gallery]
    return q_pids, rng.integers(0, CAMERAS, NUM_QUERY), g_pids, rng.integers(0, CAMERAS, g_pids.shape[0])


def write_folder(folder, gen, pids, camids, offset, shard_size=32768):
    paths = [f"generated/{offset + i:08d}.jpg" for i in range(len(pids))]
    writer = FeatureStoreWriter(
        folder,
        paths,
        {"global": gen.dim},
        pids=pids,
        camids=camids,
        shard_size=shard_size,
        extra={"generator": vars_of(gen)},
    )
    writer.prepare()
    for shard in writer.pending():
        start, stop = writer.shard_rows(shard)
        writer.write_shard(shard, {"global": gen.images(pids[start:stop], offset + start)})
        print(f"{folder}: shard {shard + 1}/{writer.num_shards}", flush=True)
    return writer.finish()


def vars_of(gen):
    return {"rank": gen.rank, "spread": gen.spread, "noise": gen.noise, "dim": gen.dim, "seed": gen.seed}


# ------------------------------------------------------------------------------------------ steps


def cmd_render_extract(args):
    from scstn_vcn.data.synthetic import make_synthetic
    from scstn_vcn.engine.feature_shards import extract_to_folder
    from scstn_vcn.extractor import FeatureExtractor

    data = os.path.join(args.work, "distractors")
    per_identity = 10
    identities = -(-args.images // per_identity)
    begin = time.perf_counter()
    root = make_synthetic(
        data,
        num_identities=2 * identities,  # half train (unused), half test
        seed=7,
        images_per_identity=per_identity,
        gallery_per_identity=per_identity - 1,
        query_per_identity=1,
        num_distractors=0,
        num_junk=0,
        height=128,
        width=64,
    )
    render_s = time.perf_counter() - begin
    from scstn_vcn.data import build_dataset

    items = build_dataset("synthetic", str(root)).gallery
    paths = [item[0] for item in items]
    fe = FeatureExtractor(args.checkpoint, device="cpu", batch_size=64)
    dims = {name: int(fe.model.feature_dims[name]) for name in fe.feature_names}
    begin = time.perf_counter()
    extract_to_folder(
        lambda chunk: {k: v.numpy() for k, v in fe.extract(list(chunk)).items()},
        paths,
        os.path.join(args.work, "extracted"),
        dims,
        pids=[item[1] for item in items],
        camids=[item[2] for item in items],
        shard_size=1024,
    )
    extract_s = time.perf_counter() - begin
    payload = {
        "rendered_images": 2 * identities * per_identity,  # the train half is rendered too, and counted
        "render_seconds": round(render_s, 1),
        "extracted_images": len(paths),
        "extract_seconds": round(extract_s, 1),
        "extract_dims": dims,
        "checkpoint": os.path.abspath(args.checkpoint),
    }
    rendered = payload["rendered_images"]
    per_k = (render_s / rendered + extract_s / len(paths)) * 1000
    payload["render_plus_extract_seconds_per_1000"] = round(per_k, 1)
    payload["extrapolated_hours"] = {
        "500k": round(per_k * 515.913 / 3600, 1),
        "2.36M": round(per_k * 2362.447 / 3600, 1),
    }
    print(json.dumps(payload, indent=1))
    save(args.json, payload)


def cmd_extracted_rerank(args):
    """Exact against approximate re-ranking on the extracted features themselves (the real pipeline's
    features; small): the rendered set's query images against its gallery, global and fusion."""
    from scstn_vcn.data import build_dataset
    from scstn_vcn.engine.feature_shards import extract_to_folder
    from scstn_vcn.extractor import FeatureExtractor
    from scstn_vcn.metrics import RerankConfig, evaluate_features

    torch.set_num_threads(args.threads)
    folder = os.path.join(args.work, "extracted_query")
    if not os.path.isfile(os.path.join(folder, "features.json")):
        items = build_dataset("synthetic", os.path.join(args.work, "distractors")).query
        fe = FeatureExtractor(args.checkpoint, device="cpu", batch_size=64)
        dims = {name: int(fe.model.feature_dims[name]) for name in fe.feature_names}
        extract_to_folder(
            lambda chunk: {k: v.numpy() for k, v in fe.extract(list(chunk)).items()},
            [item[0] for item in items],
            folder,
            dims,
            pids=[item[1] for item in items],
            camids=[item[2] for item in items],
        )
    query, gallery = open_features(folder), open_features(os.path.join(args.work, "extracted"))
    ids = (query.pids, gallery.pids, query.camids, gallery.camids)
    out = {}
    for backend in ("exact", "faiss-ivf"):
        search = NeighbourSearch(backend, nprobe=args.nprobe, nlist=args.nlist, codes=args.codes, recall_sample=500)
        begin = time.perf_counter()
        results = evaluate_features(
            query.feats, gallery.feats, *ids, rerank=RerankConfig(), neighbours=search, fprs=None
        )
        out[backend] = {
            "seconds": round(time.perf_counter() - begin, 2),
            "rows": {
                row: {
                    "rank1": round(100 * r["rank1"], 2),
                    "mAP": round(100 * r["mAP"], 2),
                    **({"neighbours": r["neighbours"]} if "neighbours" in r else {}),
                }
                for row, r in results.items()
            },
        }
    delta = {
        row: {m: round(out["faiss-ivf"]["rows"][row][m] - out["exact"]["rows"][row][m], 2) for m in ("rank1", "mAP")}
        for row in out["exact"]["rows"]
    }
    payload = {
        "case": f"{query.num_items} x {gallery.num_items} extracted features",
        "results": out,
        "ivf_minus_exact": delta,
    }
    print(json.dumps(payload, indent=1, default=str))
    save(args.json, json.loads(json.dumps(payload, default=str)))


def cmd_calibrate(args):
    extracted = open_features(os.path.join(args.work, "extracted"))
    target = {}
    for name, x in extracted.feats.items():
        target[name] = profile(np.asarray(x, dtype=np.float32))
        print(name, target[name], flush=True)
    goal = target[args.branch]
    n = goal["items"]
    trials = []
    for rank in args.ranks:
        for spread in args.spreads:
            for noise in args.noises:
                gen = Generator(rank, spread, noise)
                pids = np.arange(n) // 9  # the extracted set's ~9 images an identity
                got = profile(gen.images(pids, 0))
                curve = [
                    got["ivf"]["recall_at_nprobe"][p] - goal["ivf"]["recall_at_nprobe"][p] for p in map(str, PROBES)
                ]
                score = abs(np.log(got["pca90"] / goal["pca90"])) + float(np.mean(np.abs(curve))) * 5
                trials.append({"generator": vars_of(gen), "profile": got, "score": round(float(score), 4)})
                print(trials[-1], flush=True)
    best = min(trials, key=lambda t: t["score"])
    save(args.json, {"target": target, "matched_branch": args.branch, "best": best, "trials": trials})
    write_json_atomically(os.path.join(args.work, "generator.json"), best["generator"])


MARKET_MAP = 0.886  # the paper's Market-1501 mAP (rank-1 96.1)


def market_part(gen):
    """rank-1 and mAP of the generated Market part (3,368 queries x 15,913 gallery items, no distractors)."""
    from scstn_vcn.metrics import evaluate_features

    q_pids, q_cams, g_pids, g_cams = labels(MARKET_GALLERY)
    query = {"global": torch.from_numpy(gen.images(q_pids, 10**9))}
    gallery = {"global": torch.from_numpy(gen.images(g_pids, 0))}
    r = evaluate_features(query, gallery, q_pids, g_pids, q_cams, g_cams, fusion=None, fprs=None)["global"]
    return {"rank1": round(100 * r["rank1"], 2), "mAP": round(100 * r["mAP"], 2)}


def cmd_difficulty(args):
    torch.set_num_threads(args.threads)
    path = os.path.join(args.work, "generator.json")
    with open(path) as handle:
        settings = json.load(handle)
    # bisection on a grid of hundredths (mAP falls as the spread grows)
    lo, hi = round(100 * args.low), round(100 * args.high)
    trials = []
    while hi - lo > 1:
        mid = (lo + hi) // 2
        spread = mid / 100
        got = market_part(Generator(settings["rank"], spread, settings["noise"], settings["dim"], settings["seed"]))
        trials.append({"spread": spread, **got})
        print(trials[-1], flush=True)
        lo, hi = (mid, hi) if got["mAP"] > 100 * MARKET_MAP else (lo, mid)
    best = min(trials, key=lambda t: abs(t["mAP"] - 100 * MARKET_MAP))
    gen = Generator(settings["rank"], best["spread"], settings["noise"], settings["dim"], settings["seed"])
    pids = np.arange(1800) // 9
    payload = {
        "target_mAP": 100 * MARKET_MAP,
        "before": settings,
        "trials": trials,
        "chosen": vars_of(gen),
        "market_part": {k: best[k] for k in ("rank1", "mAP")},
        "profile_at_1800_items": profile(gen.images(pids, 0)),
    }
    print(json.dumps(payload, indent=1))
    save(args.json, payload)
    write_json_atomically(path, vars_of(gen))


def cmd_generate(args):
    with open(os.path.join(args.work, "generator.json")) as handle:
        settings = json.load(handle)
    gen = Generator(settings["rank"], settings["spread"], settings["noise"], settings["dim"], settings["seed"])
    q_pids, q_cams, g_pids, g_cams = labels(args.gallery)
    base = os.path.join(args.work, args.name)
    begin = time.perf_counter()
    write_folder(os.path.join(base, "query"), gen, q_pids, q_cams, offset=10**9)
    write_folder(os.path.join(base, "gallery"), gen, g_pids, g_cams, offset=0)
    print(f"generated {args.gallery} gallery items in {time.perf_counter() - begin:.0f}s")


def cmd_eval(args):
    from scstn_vcn.metrics import RerankConfig, evaluate_features

    use_threads(args.threads)
    base = os.path.join(args.work, args.name)
    query, gallery = open_features(os.path.join(base, "query")), open_features(os.path.join(base, "gallery"))
    search = None
    if args.rerank:
        search = neighbour_search(args, args.neighbours)
    with MemorySampler() as memory:
        begin = time.perf_counter()
        results = evaluate_features(
            query.feats,
            gallery.feats,
            query.pids,
            gallery.pids,
            query.camids,
            gallery.camids,
            fusion=None,
            chunk_size=args.chunk_size,
            rerank=RerankConfig() if args.rerank else None,
            neighbours=search,
            fprs=None,
        )
        seconds = time.perf_counter() - begin
    rows = {
        row: {k: (round(100 * v, 2) if k in ("rank1", "mAP", "mINP") else v) for k, v in r.items() if k != "cmc"}
        for row, r in results.items()
    }
    payload = {
        "case": f"{query.num_items} x {gallery.num_items}, {args.name}",
        "features": {"query": query.folder, "gallery": gallery.folder, "dim": int(gallery.feats["global"].shape[1])},
        "gallery_bytes_on_disk": int(gallery.feats["global"].nbytes),
        "chunk_size": args.chunk_size,
        "rerank": RerankConfig().as_dict() if args.rerank else None,
        "neighbours": search.as_dict() if search else None,
        "seconds": round(seconds, 1),
        "memory": memory.report(),
        "results_percent": rows,
    }
    print(json.dumps(payload, indent=1, default=str))
    save(args.json, json.loads(json.dumps(payload, default=str)))


def neighbour_search(args, backend):
    """The NeighbourSearch of the eval / neighbours steps' flags."""
    options = {"nprobe": args.nprobe, "recall_sample": args.recall_sample, "train_size": args.train_size}
    if backend == "faiss-ivf":
        options.update(codes=args.codes, nlist=args.nlist)
    if backend == "faiss":
        options.update(factory=args.factory, params=args.params)
    return NeighbourSearch(backend, **options)


def cmd_neighbours(args):
    """Only re-ranking's neighbour search (k1 + 1 = 21) with its measured recall, over queries + gallery."""
    from scstn_vcn.metrics.item_features import ItemFeatures
    from scstn_vcn.metrics.neighbours import find_neighbours

    use_threads(args.threads)
    base = os.path.join(args.work, args.name)
    query, gallery = open_features(os.path.join(base, "query")), open_features(os.path.join(base, "gallery"))
    search = neighbour_search(args, args.neighbours)
    with MemorySampler() as memory:
        begin = time.perf_counter()
        items = ItemFeatures(query.feats, gallery.feats)
        _, report = find_neighbours(items, {"global": ("global",)}, RECALL_K, search)
        seconds = time.perf_counter() - begin
    payload = {
        "case": f"{query.num_items} + {gallery.num_items} items, {args.name}: k1 + 1 = {RECALL_K} neighbours",
        "seconds": round(seconds, 1),
        "memory": memory.report(),
        "report": report,
    }
    print(json.dumps(payload, indent=1, default=str))
    save(args.json, json.loads(json.dumps(payload, default=str)))


def add_neighbour_args(p, default):
    p.add_argument("--neighbours", default=default, choices=("exact", "faiss-flat", "faiss-ivf", "faiss"))
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--nlist", type=int)
    p.add_argument("--codes", default="SQ8")
    p.add_argument("--factory", help="--neighbours faiss: the faiss factory string, e.g. PCA64,HNSW32")
    p.add_argument("--params", help="--neighbours faiss: search parameters, e.g. efSearch=128")
    p.add_argument("--train-size", type=int)
    p.add_argument("--recall-sample", type=int, default=500)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/work/bigdata/large_gallery", help="folder for the big data")
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("render-extract")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--json")
    p = sub.add_parser("extracted-rerank")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--nprobe", type=int, default=4)
    p.add_argument("--nlist", type=int)
    p.add_argument("--codes", default="SQ8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    p = sub.add_parser("neighbours")
    p.add_argument("--name", default="market500k")
    add_neighbour_args(p, default="faiss-ivf")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    p = sub.add_parser("calibrate")
    p.add_argument("--branch", default="global")
    p.add_argument("--ranks", type=lambda t: [int(v) for v in t.split(",")], default=[16, 32, 64, 128])
    p.add_argument("--spreads", type=lambda t: [float(v) for v in t.split(",")], default=[0.3, 0.5, 0.7, 1.0])
    p.add_argument("--noises", type=lambda t: [float(v) for v in t.split(",")], default=[0.01, 0.03])
    p.add_argument("--json")
    p = sub.add_parser("difficulty")
    p.add_argument("--low", type=float, default=0.3)
    p.add_argument("--high", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    p = sub.add_parser("generate")
    p.add_argument("--gallery", type=int, default=515913)
    p.add_argument("--name", default="market500k")
    p = sub.add_parser("eval")
    p.add_argument("--name", default="market500k")
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--rerank", action="store_true")
    add_neighbour_args(p, default="exact")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    steps = {"render-extract": cmd_render_extract, "extracted-rerank": cmd_extracted_rerank}
    steps.update({"calibrate": cmd_calibrate, "difficulty": cmd_difficulty, "generate": cmd_generate})
    steps.update({"eval": cmd_eval, "neighbours": cmd_neighbours})
    steps[args.step](args)


if __name__ == "__main__":
    main()
