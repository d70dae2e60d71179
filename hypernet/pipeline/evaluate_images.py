"""evaluate-images: every method's LoRA for every held-out identity drawn with the same prompts
and seeds, embedded like the references, scored against them (identity_scores)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from ..collect.jobs import TrainingSettings, caption_for
from ..common.images import read_image
from ..common.tensors import mean_embedding
from ..data.identity_folders import scan_source
from ..errors import HypernetError
from .identity_scores import MethodScores, identity_similarity, reference_calibration
from .image_methods import HeldOut, Method


def read_heldout(src: Path, caption_template: str, token: str) -> list[HeldOut]:
    """Held-out identity folders with their reference images and captions (kohya `.txt` beside
    an image, else the template); an identity without references is an error."""
    settings = TrainingSettings(caption_template=caption_template, token=token)
    identities = []
    for folder in scan_source(src):
        if not folder.photos:
            raise HypernetError(f"held-out identity {folder.id} has no reference images in {folder.path}; every "
                                "identity needs at least one (its photos, or its glyph images with .txt captions)")
        captions = [caption_for(photo, settings)[0] for photo in folder.photos]
        identities.append(HeldOut(folder.id, folder.path, folder.photos, captions, folder.loras))
    return identities


class Embedder:
    """The pack's embedding path (hypernet.encoders.face): detection for photos of faces, or
    the aligned-crop mode where each image already is the crop (the miniature's specimen
    sheets). The renderer says which images of an identity the model sees (`embedding_views`):
    each photo, or sheets of glyphs."""

    def __init__(self, model_dir: Path, aligned_crops: bool, views=list):
        from ..encoders.face import ArcFaceEmbedder
        self.inner = ArcFaceEmbedder(model_dir, aligned_crops=aligned_crops)
        if not aligned_crops and not self.inner.analyzer.can_detect:
            raise HypernetError(f"{model_dir} holds only a recognition model, which cannot find faces: pass "
                                "--aligned-crops if every image is already the aligned crop (glyphs, cropped faces)")
        self.name = self.inner.name
        self.aligned_crops = aligned_crops
        self.views = views

    def embed_references(self, photos: list[Path]) -> np.ndarray:
        """[k, d]: one row per view of the reference images; a reference without a face is an error."""
        views = self.views([read_image(p) for p in photos])
        try:
            return np.stack([self.inner.embed_image(v) for v in views])
        except HypernetError as exc:
            raise HypernetError(f"reference images of {photos[0].parent}: {exc}") from None

    def embed_generated(self, images: np.ndarray) -> tuple[list[np.ndarray], int]:
        """(embeddings of the views in which the model finds its subject, how many views it did not)."""
        found, missing = [], 0
        for view in self.views(images):
            try:
                found.append(self.inner.embed_image(view))
            except HypernetError:  # no face: the method failed to draw one, which scores 0
                if self.aligned_crops:
                    raise
                missing += 1
        return found, missing


def embed_references(identities: list[HeldOut], embedder: Embedder) -> dict[str, np.ndarray]:
    embeddings = {}
    for identity in identities:
        started = time.perf_counter()
        rows = embedder.embed_references(identity.photos)
        identity.embedding = mean_embedding(rows)
        identity.embed_seconds = time.perf_counter() - started
        embeddings[identity.id] = rows
    return embeddings


def evaluate_images(identities: list[HeldOut], methods: list[Method], renderer, embedder: Embedder,
                    prompts: list[str], seeds: list[int], *, log=None) -> tuple[list[MethodScores], MethodScores,
                                                                                 dict[str, dict[str, np.ndarray]], dict]:
    """(scores per method, the calibration row, drawn images [identity][method], images without a
    detected subject [method][identity])."""
    references = embed_references(identities, embedder)
    calibration = MethodScores("calibration")
    for identity in identities:
        value = reference_calibration(references[identity.id])
        if value is not None:
            calibration.scores[identity.id] = value
    scores = [MethodScores(m.name) for m in methods]
    drawn: dict[str, dict[str, np.ndarray]] = {i.id: {} for i in identities}
    missing: dict[str, dict[str, int]] = {m.name: {} for m in methods}
    for identity in identities:
        for method, row in zip(methods, scores):
            made = method.make(identity)
            images = renderer.draw(made.lora, prompts, seeds, what=f"the {method.name} LoRA of {identity.id}")
            found, lost = embedder.embed_generated(images)
            total = len(found) + lost
            score = identity_similarity(np.stack(found), references[identity.id]) * len(found) / total if found else 0.0
            row.scores[identity.id], row.seconds[identity.id] = score, made.seconds
            if made.note:
                row.notes[identity.id] = made.note
            if lost:
                missing[method.name][identity.id] = lost
            drawn[identity.id][method.name] = images
            if log is not None:
                log(f"{identity.id}: {method.name} {score:.3f}"
                    + ("" if made.seconds is None else f" ({made.seconds:.2f} s)"))
    return scores, calibration, drawn, {k: v for k, v in missing.items() if v}


def stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def reference_thumbnails(identity: HeldOut, limit: int) -> list[np.ndarray]:
    return [read_image(p) for p in identity.photos[:limit]]
