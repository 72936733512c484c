"""A small offline stand-in for ``kustomize build``, for the features our kustomizations use and no others.

No kustomize binary runs here, yet the overlays are what gets applied, so the tests build them: resources
(files and nested kustomizations), ``namespace``, ``secretGenerator`` (literals and files, with
``disableNameSuffixHash``) and JSON 6902 ``patches`` with a ``target``. A kustomization using anything else
is refused, so that a new feature cannot slip past the tests unbuilt.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

Manifest = dict[str, Any]

KUSTOMIZATION = "kustomization.yaml"
SUPPORTED_FIELDS = frozenset(
    {"apiVersion", "kind", "namespace", "resources", "patches", "secretGenerator", "generatorOptions"}
)
SUPPORTED_TARGET_FIELDS = frozenset({"group", "version", "kind", "name"})
# Kinds without a namespace; kustomize's `namespace` renames a Namespace object instead.
CLUSTER_SCOPED = frozenset({"Namespace"})


class KustomizeError(Exception):
    """The kustomization cannot be built (or uses a feature this stand-in does not implement)."""


def load_documents(path: Path) -> list[Manifest]:
    """The non-empty YAML documents of ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_kustomization(directory: Path) -> Manifest:
    """``directory``'s kustomization, refused if it uses a field this stand-in does not build."""
    spec = yaml.safe_load((directory / KUSTOMIZATION).read_text())
    if not isinstance(spec, dict):
        raise KustomizeError(f"{directory / KUSTOMIZATION} is not a mapping")
    unsupported = set(spec) - SUPPORTED_FIELDS
    if unsupported:
        raise KustomizeError(f"{directory / KUSTOMIZATION}: fields not built by the tests: {sorted(unsupported)}")
    return spec


def build(directory: Path) -> list[Manifest]:
    """What ``kustomize build directory`` prints, as parsed documents."""
    spec = load_kustomization(directory)
    documents: list[Manifest] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if (path / KUSTOMIZATION).is_file():
            documents += build(path)
        elif path.is_file():
            documents += load_documents(path)
        else:
            raise KustomizeError(f"{directory / KUSTOMIZATION}: resource {entry} does not exist")
    documents += _generate_secrets(directory, spec)
    if "namespace" in spec:
        _set_namespace(documents, spec["namespace"])
    for patch in spec.get("patches", []):
        _apply_patch(directory, patch, documents)
    _refuse_duplicates(documents)
    return documents


def identity(doc: Manifest) -> tuple[str, str, str]:
    """``(kind, namespace, name)``: what must be unique in a build."""
    meta = doc.get("metadata", {})
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def patch_paths(directory: Path) -> list[Path]:
    """The patch files ``directory``'s kustomization names (they are JSON 6902 operations, not manifests)."""
    return [directory / patch["path"] for patch in load_kustomization(directory).get("patches", []) if "path" in patch]


def _generate_secrets(directory: Path, spec: Manifest) -> list[Manifest]:
    generators = spec.get("secretGenerator", [])
    if generators and spec.get("generatorOptions", {}).get("disableNameSuffixHash") is not True:
        # kustomize would add a content hash to the names and rewrite every reference: not mimicked here.
        raise KustomizeError(f"{directory}: secretGenerator without generatorOptions.disableNameSuffixHash: true")
    secrets = []
    for generator in generators:
        if set(generator) - {"name", "literals", "files"}:
            raise KustomizeError(f"{directory}: secretGenerator fields not built by the tests: {generator}")
        data: dict[str, bytes] = {}
        for literal in generator.get("literals", []):
            key, sep, value = literal.partition("=")
            if not sep:
                raise KustomizeError(f"{directory}: secret literal without '=': {key}")
            data[key] = value.encode()
        for file in generator.get("files", []):
            key, sep, source = file.partition("=")
            path = directory / (source if sep else key)
            if not path.is_file():
                raise KustomizeError(f"{directory}: secret file {path} does not exist")
            data[Path(key).name] = path.read_bytes()
        secrets.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": generator["name"]},
                "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
            }
        )
    return secrets


def _set_namespace(documents: list[Manifest], namespace: str) -> None:
    for doc in documents:
        if doc["kind"] == "Namespace":
            doc["metadata"]["name"] = namespace
        elif doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace


def _matches(target: Manifest, doc: Manifest) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": doc["kind"]}
    for field, value in wanted.items():
        if field in target and target[field] != value:
            return False
    # kustomize reads a target's name as an anchored regular expression.
    return "name" not in target or re.fullmatch(target["name"], doc["metadata"]["name"]) is not None


def _apply_patch(directory: Path, patch: Manifest, documents: list[Manifest]) -> None:
    target = patch.get("target")
    if set(patch) != {"path", "target"} or not isinstance(target, dict):
        raise KustomizeError(f"{directory}: only JSON 6902 patches from a file with a target are built: {patch}")
    if set(target) - SUPPORTED_TARGET_FIELDS:
        raise KustomizeError(f"{directory}: target fields not built by the tests: {target}")
    operations = yaml.safe_load((directory / patch["path"]).read_text())
    if not isinstance(operations, list):
        raise KustomizeError(f"{directory / patch['path']} is not a list of JSON 6902 operations")
    matched = [index for index, doc in enumerate(documents) if _matches(target, doc)]
    if not matched:
        raise KustomizeError(f"{directory}: patch {patch['path']} matches no resource")
    for index in matched:
        documents[index] = jsonpatch.JsonPatch(operations).apply(documents[index])


def _refuse_duplicates(documents: list[Manifest]) -> None:
    seen: set[tuple[str, str, str]] = set()
    for doc in documents:
        key = identity(doc)
        if key in seen:
            raise KustomizeError(f"two resources are {key}")
        seen.add(key)
