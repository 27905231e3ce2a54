"""The model registry: MLflow's versions and aliases, plus the two things its users miss.

MLflow keeps versions of a registered model and aliases pointing at them (`champion`,
`challenger`, `previous`; `models:/ranknet@champion`). On top of it:

- **an alias history.** MLflow overwrites an alias and keeps no record of what it pointed at
  before (mlflow#2169), so rollback and audit are guesswork. Every change made here appends
  one JSON line (time, name, alias, from, to, reason) to a file next to the registry's
  database (`mlflow.db` -> `mlflow.alias-history.jsonl`; `MLSYS_ALIAS_HISTORY` overrides, and
  is needed when the registry is a remote server). Lines are only ever appended.
- **a probe gate.** At registration a domain scores a fixed input with the model as it will
  be served and records the output on the version (`mlsys.probe`). Before an alias points a
  version at production (`champion`), its files are fetched, loaded and probed again: a
  version that does not load, or whose output differs, is refused. What "load and probe"
  means is the domain's business, so the caller passes `probe` (see `mlsys.compose.models`);
  this module imports no domain.

MLflow is imported lazily (`tracking.client`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlsys.errors import MlsysError
from mlsys.files import JsonIn
from mlsys.platform.tracking import client, tracked_run, tracking_uri

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
GATED_ALIASES = frozenset({CHAMPION})
PROBE_TOLERANCE = 1e-4  # INT8 kernels may differ in the last bits across CPU instruction sets
_MODEL_URI = re.compile(
    r"models:/(?P<name>[A-Za-z0-9_.-]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[0-9]+))"
)

Probe = Callable[[Path], list[float]]


class RegistryError(MlsysError):
    """A registry operation refused (unknown name or version, probe mismatch, ...)."""


@dataclass(frozen=True)
class ModelCard:
    """What a domain says about a model directory, recorded on its registered version."""

    kind: str  # "ranknet", "garment-tagger": a name's versions must all be of one kind
    file_version: str  # content hash of the served file (what X-Model-Version-like logs show)
    data_checksum: str
    metrics: Mapping[str, float]
    probe: list[float]


@dataclass(frozen=True)
class ModelRef:
    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return (
            f"models:/{self.name}@{self.alias}"
            if self.alias
            else f"models:/{self.name}/{self.version}"
        )


def parse_model_uri(uri: str) -> ModelRef | None:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION`; None for anything else (a folder)."""
    m = _MODEL_URI.fullmatch(uri)
    if m is None:
        if uri.startswith("models:/"):
            raise RegistryError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
        return None
    return ModelRef(m["name"], m["alias"], m["version"])


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    aliases: list[str]
    kind: str
    file_version: str
    data_checksum: str
    metrics: dict[str, float]
    created: str
    source: str
    tags: dict[str, str] = field(repr=False, default_factory=dict)


def history_path(uri: str | None = None) -> Path:
    """Where the alias history lives: next to a sqlite registry, else `MLSYS_ALIAS_HISTORY`."""
    if os.environ.get("MLSYS_ALIAS_HISTORY"):
        return Path(os.environ["MLSYS_ALIAS_HISTORY"])
    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).with_suffix(".alias-history.jsonl")
    raise RegistryError(
        f"the registry at {uri} is not a local sqlite file: set MLSYS_ALIAS_HISTORY to the "
        "alias history's path"
    )


# What MLflow accepts as an alias, less what it reserves ("latest", and v<N>, which reads as a
# version): checked here so a bad name is one line, not MLflow's traceback.
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,254}")
_RESERVED_ALIAS = re.compile(r"latest|v\d+", re.IGNORECASE)


def check_alias(alias: str) -> str:
    if not _ALIAS.fullmatch(alias) or _RESERVED_ALIAS.fullmatch(alias):
        raise RegistryError(
            f"alias {alias!r}: a letter, then letters, digits, _ or -; not 'latest' or v<N>"
        )
    return alias


class Registry:
    """Register, list, alias, promote, roll back, and resolve model versions.

    A registry is created only by `create=True` (registering a version): a mistyped
    $MLFLOW_TRACKING_URI to a sqlite file that does not exist is an error, not a new, empty
    registry that every later command would quietly read."""

    def __init__(self, uri: str | None = None, *, create: bool = False) -> None:
        self.uri = uri or tracking_uri()
        if not create and self.uri.startswith("sqlite:///"):
            db = Path(self.uri.removeprefix("sqlite:///"))
            if not db.is_file():
                raise RegistryError(
                    f"no registry at {db} ($MLFLOW_TRACKING_URI); `mlsys models register` "
                    "creates one"
                )
        self.client = client(self.uri)
        from mlflow.exceptions import MlflowException

        self._not_found = MlflowException

    # -------------------------------------------------------------- versions

    def register(
        self, model_dir: str | Path, name: str, card: ModelCard, run_id: str | None = None
    ) -> str:
        """A new version of `name` holding `model_dir`'s files; returns its number.

        The files are logged as the artifacts of a run (a registration run in experiment
        `name` unless `run_id` says which training run they came from), so the version's
        source survives the model directory being deleted.
        """
        folder = Path(model_dir)
        if not folder.is_dir():
            raise RegistryError(f"{folder}: not a model directory")
        existing = self._kind(name)
        if existing is not None and existing != card.kind:
            raise RegistryError(f"{name} holds {existing} models; {folder} is a {card.kind}")
        if run_id is None:
            with tracked_run(name, run_name=f"register {folder.name}", uri=self.uri) as run:
                run.log_artifacts(folder, "model")
                run.set_tags({"mlsys.data_checksum": card.data_checksum})
                run_id = run.run_id
        elif not self.client.list_artifacts(run_id, "model"):  # training may have logged them
            self.client.log_artifacts(run_id, str(folder), "model")
        if self._registered(name) is None:
            self.client.create_registered_model(name, tags={"mlsys.kind": card.kind})
        source = f"{self.client.get_run(run_id).info.artifact_uri}/model"
        tags = {
            "mlsys.kind": card.kind,
            "mlsys.file_version": card.file_version,
            "mlsys.data_checksum": card.data_checksum,
            "mlsys.metrics": json.dumps(dict(card.metrics)),
            "mlsys.probe": json.dumps(card.probe),
        }
        version = self.client.create_model_version(name, source, run_id=run_id, tags=tags)
        return str(version.version)

    def tag_version(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Record facts about a version after its registration (e.g. a gate's verdict)."""
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, value)

    def versions(self, name: str | None = None) -> list[VersionInfo]:
        """Every version (of `name`, or of every model), newest first."""
        if name is not None and self._registered(name) is None:
            raise RegistryError(f"no registered model named {name!r}")
        found = self.client.search_model_versions(f"name='{name}'" if name else "")
        # Version search does not fill in aliases; the registered model has them all.
        aliases: dict[tuple[str, str], list[str]] = {}
        for model_name in {v.name for v in found}:
            for alias, version in self.client.get_registered_model(model_name).aliases.items():
                aliases.setdefault((model_name, str(version)), []).append(alias)
        infos = [self._info(v, aliases.get((v.name, str(v.version)), [])) for v in found]
        return sorted(infos, key=lambda v: (v.name, -int(v.version)))

    def version(self, name: str, version: str) -> VersionInfo:
        try:
            return self._info(self.client.get_model_version(name, version))
        except self._not_found as exc:
            raise RegistryError(f"{name} has no version {version}") from exc

    def alias_target(self, name: str, alias: str) -> str | None:
        check_alias(alias)
        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except self._not_found:  # no such alias, or no such name
            return None

    def resolve(self, ref: ModelRef) -> VersionInfo:
        """The version a reference names now."""
        if ref.version is not None:
            return self.version(ref.name, ref.version)
        assert ref.alias is not None
        target = self.alias_target(ref.name, ref.alias)
        if target is None:
            raise RegistryError(f"{ref}: {ref.name} has no alias {ref.alias!r}")
        return self.version(ref.name, target)

    def download(self, info: VersionInfo, cache: str | Path | None = None) -> Path:
        """The version's files in a local folder, fetched once into the cache.

        Workers fetch a new version at about the same time when an alias moves: each fetches
        into a folder of its own and renames it into place, so nobody ever reads a half-copied
        version (a rename onto an existing folder fails, and the loser's copy, identical,
        is dropped).
        """
        from mlflow.artifacts import download_artifacts

        root = Path(cache or os.environ.get("MLSYS_MODEL_CACHE") or Path.home() / ".cache/mlsys")
        # Keyed by the artifact location too: version 1 of `ranknet` in another registry (a
        # test's, a colleague's) is another model, and must not be served from this cache.
        where = hashlib.sha256(info.source.encode()).hexdigest()[:12]
        dest = root / "models" / info.name / f"{info.version}-{where}"
        if not dest.is_dir():
            dest.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{info.version}-", dir=dest.parent))
            try:
                download_artifacts(artifact_uri=info.source, dst_path=str(staging))
                with contextlib.suppress(OSError):  # another process was first
                    os.rename(staging, dest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return dest / Path(info.source.rstrip("/")).name

    # -------------------------------------------------------------- aliases

    def set_alias(
        self, name: str, alias: str, version: str, reason: str, probe: Probe | None = None
    ) -> None:
        """Point `alias` at `version`; a gated alias (champion) first re-probes the version."""
        check_alias(alias)
        info = self.version(name, version)
        if alias in GATED_ALIASES:
            if probe is None:
                raise RegistryError(f"making {name} v{version} {alias} needs its probe")
            self.check_probe(info, probe)
        before = self.alias_target(name, alias)
        self.client.set_registered_model_alias(name, alias, version)
        self._append_history(name, alias, before, version, reason)

    def promote(self, name: str, reason: str, probe: Probe) -> tuple[str | None, str]:
        """challenger becomes champion, the old champion `previous`; returns (old, new)."""
        challenger = self.alias_target(name, CHALLENGER)
        if challenger is None:
            raise RegistryError(f"{name} has no {CHALLENGER} to promote")
        champion = self.alias_target(name, CHAMPION)
        if challenger == champion:
            raise RegistryError(f"{name} v{challenger} is already {CHAMPION}")
        self.set_alias(name, CHAMPION, challenger, reason, probe)
        if champion is not None:
            self.set_alias(name, PREVIOUS, champion, reason)
        self.delete_alias(name, CHALLENGER, reason)
        return champion, challenger

    def rollback(self, name: str, reason: str, probe: Probe) -> tuple[str, str]:
        """champion goes back to `previous`, and `previous` to the version rolled back from
        (so a second rollback undoes the first); returns (from, to)."""
        previous = self.alias_target(name, PREVIOUS)
        champion = self.alias_target(name, CHAMPION)
        if previous is None or champion is None:
            raise RegistryError(f"{name} needs both {CHAMPION} and {PREVIOUS} to roll back")
        self.set_alias(name, CHAMPION, previous, reason, probe)
        self.set_alias(name, PREVIOUS, champion, reason)
        return champion, previous

    def history(self, name: str | None = None) -> list[JsonIn]:
        path = history_path(self.uri)
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if name is None or r["name"] == name]

    def check_probe(self, info: VersionInfo, probe: Probe) -> None:
        """Load the version's files and score the probe input; refuse on any difference."""
        recorded = json.loads(info.tags.get("mlsys.probe", "null"))
        if not isinstance(recorded, list):
            raise RegistryError(f"{info.name} v{info.version} has no recorded probe output")
        try:
            computed = probe(self.download(info))
        except Exception as exc:
            raise RegistryError(
                f"{info.name} v{info.version} does not load: {type(exc).__name__}: {exc}"
            ) from exc
        if len(computed) != len(recorded) or not all(
            math.isclose(a, b, rel_tol=0, abs_tol=PROBE_TOLERANCE)
            for a, b in zip(computed, recorded, strict=False)
        ):
            raise RegistryError(
                f"{info.name} v{info.version}: the probe scores {computed[:4]}... on load, "
                f"{recorded[:4]}... at registration; its files changed or do not load the "
                "same way"
            )

    # -------------------------------------------------------------- internals

    def delete_alias(self, name: str, alias: str, reason: str) -> None:
        """Take an alias off (promoted, or a challenger rolled back); recorded in the history."""
        check_alias(alias)
        before = self.alias_target(name, alias)
        if before is not None:
            self.client.delete_registered_model_alias(name, alias)
            self._append_history(name, alias, before, None, reason)

    def _append_history(
        self, name: str, alias: str, before: str | None, after: str | None, reason: str
    ) -> None:
        row = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "name": name,
            "alias": alias,
            "from": before,
            "to": after,
            "reason": reason,
            "user": os.environ.get("USER", ""),
        }
        path = history_path(self.uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: one write per line lands whole at the end, whoever else appends.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(row) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def require(self, name: str) -> None:
        """One line when `name` is not a registered model."""
        if self._registered(name) is None:
            raise RegistryError(f"no registered model named {name!r}")

    def _registered(self, name: str) -> Any | None:
        try:
            return self.client.get_registered_model(name)
        except self._not_found:
            return None

    def _kind(self, name: str) -> str | None:
        model = self._registered(name)
        return None if model is None else model.tags.get("mlsys.kind")

    def _info(self, v: Any, aliases: list[str] | None = None) -> VersionInfo:
        tags = dict(v.tags)
        return VersionInfo(
            name=v.name,
            version=str(v.version),
            aliases=sorted(v.aliases if aliases is None else aliases),
            kind=tags.get("mlsys.kind", ""),
            file_version=tags.get("mlsys.file_version", ""),
            data_checksum=tags.get("mlsys.data_checksum", ""),
            metrics=json.loads(tags.get("mlsys.metrics", "{}")),
            created=time.strftime("%Y-%m-%d %H:%M", time.gmtime(v.creation_timestamp / 1000)),
            source=v.source,
            tags=tags,
        )
