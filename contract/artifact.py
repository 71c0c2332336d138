"""The artifact contract: one folder per version, written atomically, verified on load.

``DIR/<version>/`` holds the weights, the model config, vocabulary, labels, preprocessing
settings (with the stopword list), metrics, any plots, and ``manifest.json`` with the sha256
of every other file. ``load_artifact`` rebuilds the model from the folder alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.text import LabelEncoder, PreprocessSettings, TextEncoder, Vocabulary

if TYPE_CHECKING:  # torch is imported where weights are read or written, not by resolving a version
    import torch

    from contract.model import ModelConfig, TextClassifier

FORMAT_VERSION = 1
WEIGHTS = "model.pt"
MODEL_CONFIG = "model_config.json"
VOCAB = "vocab.json"
LABELS = "labels.json"
PREPROCESSING = "preprocessing.json"
METRICS = "metrics.json"
TRAIN_CONFIG = "train_config.json"
MANIFEST = "manifest.json"
REQUIRED_FILES = (WEIGHTS, MODEL_CONFIG, VOCAB, LABELS, PREPROCESSING, METRICS, TRAIN_CONFIG)
TMP_PREFIX = ".tmp-"
# A version folder name: a UTC timestamp, a dash and a short suffix (training writes 6 hex digits).
VERSION_RE = re.compile(r"\d{8}T\d{6}Z-[0-9A-Za-z_-]{1,64}")

log = logging.getLogger("contract.artifact")
WEIGHT_DTYPES = ("float32", "float16", "bfloat16")


class ArtifactError(Exception):
    """An artifact folder is missing, incomplete, tampered with or unreadable."""


@dataclass
class Artifact:
    """A verified, loaded model version: everything the server needs, nothing else."""

    path: Path
    version: str
    model: TextClassifier
    config: ModelConfig
    vocab: Vocabulary
    labels: LabelEncoder
    preprocessing: PreprocessSettings
    metrics: dict[str, Any]
    train_config: dict[str, Any]
    manifest: dict[str, Any] = field(repr=False)

    def text_encoder(self) -> TextEncoder:
        """Raw text → the model's input; known words skip their n-grams when the model has them folded in."""
        known_word_grams = self.model.folded is None
        return TextEncoder(self.preprocessing, self.vocab, self.config.subword_hasher(), known_word_grams)

    @property
    def temperature(self) -> float:
        """Divides the logits before the softmax (1.0 for artifacts written before calibration)."""
        return self.config.temperature


def new_version(now: datetime | None = None) -> str:
    """Sortable by creation time, unique thanks to a random suffix: ``20261129T105000Z-3f2a1c``."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def round_weights_(model: torch.nn.Module, weights_dtype: str) -> None:
    """Round floating weights to ``weights_dtype`` in place (kept in their own dtype).

    Called before the final evaluation so the metrics describe exactly the weights that
    :func:`write_artifact` stores, and a reloaded model matches the in-memory one bit for bit.
    """
    import torch

    dtype = _weights_dtype(weights_dtype)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype).to(tensor.dtype))


def _weights_dtype(name: str) -> torch.dtype:
    import torch

    if name not in WEIGHT_DTYPES:
        raise ArtifactError(f"weights dtype must be one of {sorted(WEIGHT_DTYPES)}, got {name!r}")
    dtype: torch.dtype = getattr(torch, name)
    return dtype


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8")


def write_artifact(
    artifacts_dir: str | os.PathLike[str],
    *,
    model: TextClassifier,
    vocab: Vocabulary,
    labels: LabelEncoder,
    preprocessing: PreprocessSettings,
    metrics: dict[str, Any],
    train_config: dict[str, Any],
    extra_files: dict[str, bytes] | None = None,
    provenance: dict[str, Any] | None = None,
    version: str | None = None,
    weights_dtype: str = "float32",
) -> Path:
    """Write a new version into ``artifacts_dir`` and return its folder.

    Everything goes into a hidden temporary folder that is renamed into place only once
    complete, so a crash at any point leaves no half-written version behind. Floating
    weights are stored as ``weights_dtype`` (float16 halves the file; see round_weights_).
    """
    import numpy as np
    import torch

    store_dtype = _weights_dtype(weights_dtype)
    root = Path(artifacts_dir)
    root.mkdir(parents=True, exist_ok=True)
    version = version or new_version()
    final = root / version
    if final.exists():
        raise ArtifactError(f"version already exists: {final}")
    tmp = root / f"{TMP_PREFIX}{version}"
    try:
        tmp.mkdir()
        state = {
            k: (v.detach().to("cpu", store_dtype) if v.is_floating_point() else v.detach().to("cpu")).contiguous()
            for k, v in model.state_dict().items()
        }
        torch.save(state, tmp / WEIGHTS)
        files: dict[str, bytes] = {
            MODEL_CONFIG: _json_bytes(model.config.to_dict()),
            VOCAB: _json_bytes(vocab.to_dict()),
            LABELS: _json_bytes(labels.to_dict()),
            PREPROCESSING: _json_bytes(preprocessing.to_dict()),
            METRICS: _json_bytes(metrics),
            TRAIN_CONFIG: _json_bytes(train_config),
        }
        for name, content in (extra_files or {}).items():
            if name in files or name in (WEIGHTS, MANIFEST) or Path(name).is_absolute() or ".." in Path(name).parts:
                raise ArtifactError(f"invalid extra artifact file name: {name!r}")
            files[name] = content
        for name, content in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        checksums = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "format_version": FORMAT_VERSION,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "weights_dtype": weights_dtype,
            "files": checksums,
            "libraries": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "numpy": np.__version__,
            },
            **(provenance or {}),
        }
        (tmp / MANIFEST).write_bytes(_json_bytes(manifest))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _read_json(folder: Path, name: str) -> Any:
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{folder / name}: cannot read JSON ({exc})") from exc


def _read_manifest(folder: Path) -> Any:
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder not found: {folder}")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise ArtifactError(f"{folder}: cannot read the version folder (permission denied)")
    if not (folder / MANIFEST).is_file():
        raise ArtifactError(f"{folder}: no {MANIFEST} (incomplete or not an artifact)")
    return _read_json(folder, MANIFEST)


def verify_artifact(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check the folder against its manifest; return the manifest or raise ArtifactError."""
    folder = Path(path)
    manifest = _read_manifest(folder)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ArtifactError(f"{folder / MANIFEST}: malformed manifest (no 'files' table)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{folder / MANIFEST}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    listed: dict[str, str] = manifest["files"]
    missing_from_manifest = [name for name in REQUIRED_FILES if name not in listed]
    if missing_from_manifest:
        raise ArtifactError(f"{folder / MANIFEST}: does not list {', '.join(missing_from_manifest)}")
    inside = folder.resolve()
    for name, expected in listed.items():
        file = folder / name
        if not file.resolve().is_relative_to(inside):
            raise ArtifactError(f"{folder / MANIFEST}: lists {name[:80]!r}, outside the version folder; refused")
        if not file.is_file():
            raise ArtifactError(f"{folder}: missing file {name}")
        try:
            digest = sha256_file(file)
        except OSError as exc:
            raise ArtifactError(f"{file}: cannot read ({exc.strerror or exc})") from None
        if digest != expected:
            raise ArtifactError(f"{file}: checksum mismatch (file changed since the artifact was written)")
    return manifest


def load_artifact(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Artifact:
    """Verify checksums, then rebuild model, vocabulary, labels and preprocessing from the folder."""
    import torch

    from contract.model import ModelConfig, TextClassifier

    folder = Path(path)
    manifest = verify_artifact(folder)
    try:
        config = ModelConfig.from_dict(_read_json(folder, MODEL_CONFIG))
        vocab = Vocabulary.from_dict(_read_json(folder, VOCAB))
        labels = LabelEncoder.from_dict(_read_json(folder, LABELS))
        preprocessing = PreprocessSettings.from_dict(_read_json(folder, PREPROCESSING))
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{folder}: invalid artifact contents ({exc})") from exc
    if len(vocab) != config.vocab_size or len(labels) != config.num_classes:
        raise ArtifactError(
            f"{folder}: vocabulary ({len(vocab)}) or labels ({len(labels)}) disagree with the model config"
        )
    try:
        state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
        # Compactly stored weights come back as float32, the dtype the model computes in.
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        model = TextClassifier(config)
        model.load_state_dict(state, strict=True)
        model.fold_word_ngrams(vocab)
        model.fuse_recurrence()
    except Exception as exc:  # noqa: BLE001 - any failure here means unusable weights
        raise ArtifactError(f"{folder / WEIGHTS}: cannot load weights ({exc})") from exc
    model.to(device).eval()
    return Artifact(
        path=folder,
        version=str(manifest.get("version", folder.name)),
        model=model,
        config=config,
        vocab=vocab,
        labels=labels,
        preprocessing=preprocessing,
        metrics=_read_json(folder, METRICS),
        train_config=_read_json(folder, TRAIN_CONFIG),
        manifest=manifest,
    )


def is_version_name(name: str) -> bool:
    """True for names :func:`new_version` makes; nothing else in an artifacts folder is a version."""
    return VERSION_RE.fullmatch(name) is not None


def _version_folder(root: Path, name: str) -> Path:
    """``root/name``, refused when it is a symlink (or path) that leads outside ``root``."""
    folder = root / name
    try:
        inside = folder.resolve(strict=True).is_relative_to(root.resolve(strict=True))
    except OSError as exc:
        raise ArtifactError(f"artifact folder not found: {folder}") from exc
    if not inside:
        raise ArtifactError(f"{folder}: leads outside the artifacts folder {root}; refused")
    return folder


def list_versions(artifacts_dir: str | os.PathLike[str]) -> list[str]:
    """Version folder names (the :func:`new_version` format only), in name order."""
    root = Path(artifacts_dir)
    if not root.is_dir():
        return []
    try:
        names = [p.name for p in root.iterdir()]
    except OSError as exc:
        raise ArtifactError(f"cannot list artifacts folder {root}: {exc.strerror or exc}") from None
    return sorted(name for name in names if is_version_name(name) and (root / name).is_dir())


def _created_at(folder: Path) -> str:
    """The manifest's creation time (ISO 8601 UTC, so it sorts as text); raises ArtifactError."""
    manifest = _read_manifest(folder)
    created = manifest.get("created_at") if isinstance(manifest, dict) else None
    if not isinstance(created, str):
        raise ArtifactError(f"{folder / MANIFEST}: no created_at")
    try:
        return datetime.fromisoformat(created).astimezone(UTC).isoformat()
    except ValueError:
        raise ArtifactError(f"{folder / MANIFEST}: created_at {created[:40]!r} is not an ISO time") from None


def resolve_version(artifacts_dir: str | os.PathLike[str], version: str = "latest") -> Path:
    """Folder of ``version``, or for ``latest`` of the version with the newest manifest
    ``created_at`` that passes verification; versions that fail are skipped with a warning."""
    root = Path(artifacts_dir)
    if not root.is_dir():
        raise ArtifactError(f"artifacts folder not found: {root}")
    if version != "latest":
        if not is_version_name(version):
            shown = version if len(version) <= 40 else version[:40] + "..."
            raise ArtifactError(f"invalid version name {shown!r} (expected 'latest' or a name like {new_version()!r})")
        return _version_folder(root, version)
    candidates: list[tuple[str, str, Path]] = []
    reasons: list[str] = []
    for name in list_versions(root):
        try:
            folder = _version_folder(root, name)
            candidates.append((_created_at(folder), name, folder))
        except ArtifactError as exc:
            reasons.append(str(exc))
    chosen: Path | None = None
    for _, _, folder in sorted(candidates, reverse=True):
        try:
            verify_artifact(folder)
        except ArtifactError as exc:
            reasons.append(str(exc))
        else:
            chosen = folder
            break
    if chosen is not None:
        for reason in reasons:
            log.warning("skipped artifact version: %s", reason)
        return chosen
    detail = f" ({'; '.join(reasons)})" if reasons else ""
    raise ArtifactError(f"no valid artifact version in {root}{detail}")
