"""Render the repo's kustomizations without kubectl, for machines that have none.

Debian ships no kubectl recent enough for these kustomizations (`labels:` and `patches:` need
kustomize 4), and CI machines reach only Debian's and PyPI's packages. This covers exactly what
deploy/kubernetes uses: resources (files and folders), namespace, labels, images and patches (a
strategic merge by file with a kind/name target, or an inline ``$patch: delete``). Where kubectl
is installed, tests/deploy/test_kubernetes.py renders with both and requires the same objects.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

# Kinds that live outside any namespace: kustomize's namespace transformer leaves them alone.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume"}


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize folder`` gives, for the features named above."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            objects += render(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in spec.get("patches", []):
        objects = _apply_patch(folder, patch, objects)
    namespace = spec.get("namespace")
    for obj in objects:
        metadata = obj.setdefault("metadata", {})
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            metadata["namespace"] = namespace
        for group in spec.get("labels", []):
            metadata.setdefault("labels", {}).update(group.get("pairs", {}))
        for image in spec.get("images", []):
            _set_image(obj, image)
    return objects


def _apply_patch(folder: Path, patch: dict[str, Any], objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    body = yaml.safe_load((folder / patch["path"]).read_text()) if "path" in patch else yaml.safe_load(patch["patch"])
    target = patch.get("target") or {"kind": body["kind"], "name": body["metadata"]["name"]}
    out = []
    for obj in objects:
        hit = obj["kind"] == target.get("kind") and obj["metadata"]["name"] == target.get(
            "name", obj["metadata"]["name"]
        )
        if not hit:
            out.append(obj)
        elif body.get("$patch") != "delete":
            out.append(_merge(obj, {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}))
    return out


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge for these manifests: maps merge key by key, lists of named items merge by
    name (new items first), any other list or value is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        merged_list = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(merged_list)}
        added = []  # items the patch adds go first, as kustomize puts them
        for item in patch:
            if item["name"] in index:
                merged_list[index[item["name"]]] = _merge(merged_list[index[item["name"]]], item)
            else:
                added.append(copy.deepcopy(item))
        return added + merged_list
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(item, dict) and "name" in item for item in items)


def _set_image(obj: dict[str, Any], image: dict[str, Any]) -> None:
    for spec in _pod_specs(obj):
        for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
            name, _, tag = container.get("image", "").partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}".rstrip(":")


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    template = spec.get("template", {})
    return [template["spec"]] if "spec" in template else []
