"""The KubeRay manifests and image recipe in cluster/.

Every YAML document is validated against the `ray.io/v1` schema of its CRD (KubeRay's, copied into
cluster/crds) the way `kubectl apply --validate=strict` would: unknown fields are errors wherever
the CRD lists an object's properties, int-or-string fields take either, and int32 fields must fit.
CEL rules (`x-kubernetes-validations`) are not evaluated; the operator-side checks that matter here
(names, TTL without shutdown, runtime env YAML, token auth needing Ray >= 2.52) are mirrored below.
Then the project's policy: no inline secrets, non-root containers, a GPU group that scales from 0,
deadlines and cleanup, a memory-backed /dev/shm and one image everywhere.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from mitune_ray.config import load_config
from tests.unit.test_jobs import CREDENTIAL_ENV, SECRET_LOOKING, submit_command

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
CRD_DIR = CLUSTER / "crds"  # KubeRay's CRDs, verbatim (cluster/crds/README.md)
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayService": 47}  # KubeRay's limits (service suffixes)
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1 MB each: libyaml is 10x faster


# ---------------------------------------------------------------- Kubernetes schema -> JSON Schema
def to_draft7(node: dict) -> dict:
    """A structural (OpenAPI v3) CRD schema as a Draft 7 JSON Schema with Kubernetes' semantics."""
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: to_draft7(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_draft7(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_draft7(sub) for sub in value]
        else:
            out[key] = value  # keywords, and x-kubernetes-* markers (ignored by jsonschema)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable"):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        elif "anyOf" in out:
            out["anyOf"] = out["anyOf"] + [{"type": "null"}]
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    # A listed set of properties is closed (strict field validation), unless the CRD says to
    # preserve unknown fields there or gives its own additionalProperties (a map).
    if ("properties" in out and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("int32")
def _int32(value) -> bool:
    return not isinstance(value, int) or -(2 ** 31) <= value < 2 ** 31


@FORMATS.checks("int64")
def _int64(value) -> bool:
    return not isinstance(value, int) or -(2 ** 63) <= value < 2 ** 63


OBJECT_META = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string"}, "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
CORE_SCHEMAS = {  # the core v1 kinds cluster/ holds, which have no CRD
    "Secret": {"type": "object", "required": ["apiVersion", "kind", "metadata"], "additionalProperties": False,
               "properties": {"apiVersion": {"const": "v1"}, "kind": {"const": "Secret"},
                              "metadata": OBJECT_META, "type": {"type": "string"},
                              "stringData": STRING_MAP, "data": STRING_MAP, "immutable": {"type": "boolean"}}},
    "ConfigMap": {"type": "object", "required": ["apiVersion", "kind", "metadata"], "additionalProperties": False,
                  "properties": {"apiVersion": {"const": "v1"}, "kind": {"const": "ConfigMap"},
                                 "metadata": OBJECT_META, "data": STRING_MAP, "binaryData": STRING_MAP,
                                 "immutable": {"type": "boolean"}}},
}


@functools.lru_cache(maxsize=None)
def validator(kind: str) -> jsonschema.Draft7Validator:
    """The strict validator of a kind: its CRD's `v1` schema, or a core v1 schema."""
    if kind in CORE_SCHEMAS:
        return jsonschema.Draft7Validator(CORE_SCHEMAS[kind], format_checker=FORMATS)
    assert kind in CRD_FILES, f"cluster/ holds a {kind}, which has no schema here; use one of " \
                              f"{sorted(CRD_FILES) + sorted(CORE_SCHEMAS)}"
    path = CRD_DIR / CRD_FILES[kind]
    assert path.is_file(), (f"KubeRay CRD {path} is missing: cluster/crds is part of the repository "
                            "(see its README); these tests never skip")
    crd = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    assert "v1" in versions and not versions["v1"].get("deprecated"), f"{path.name} serves no current v1"
    schema = to_draft7(versions["v1"]["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": "ray.io/v1"}
    schema["properties"]["kind"] = {"const": kind}
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=FORMATS)


def schema_errors(doc: dict) -> list[str]:
    kind = doc.get("kind") if isinstance(doc, dict) else None
    assert isinstance(kind, str), f"a manifest without a kind: {str(doc)[:80]}"
    errors = sorted(validator(kind).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{e.json_path}: {e.message}" for e in errors]


# ---------------------------------------------------------------------------------- the manifests
def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


MANIFESTS = sorted(CLUSTER.glob("*.yaml"))
DOCS = [(path, i, doc) for path in MANIFESTS for i, doc in enumerate(load_docs(path))]
RAY_DOCS = [(path, doc) for path, _, doc in DOCS if doc["kind"] in CRD_FILES]


def the(kind: str, name: str | None = None) -> dict:
    found = [d for _, _, d in DOCS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in cluster/, found {len(found)}"
    return found[0]


def cluster_spec(doc: dict) -> dict:
    return {"RayJob": lambda: doc["spec"]["rayClusterSpec"], "RayCluster": lambda: doc["spec"],
            "RayService": lambda: doc["spec"]["rayClusterConfig"]}[doc["kind"]]()


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    spec = cluster_spec(doc)
    found = [("head", spec["headGroupSpec"]["template"])]
    found += [(f"worker group {g['groupName']}", g["template"]) for g in spec.get("workerGroupSpecs", [])]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        found.append(("submitter", doc["spec"]["submitterPodTemplate"]))
    return found


def containers(doc: dict) -> list[tuple[str, dict]]:
    found = [(f"{where} {c['name']}", c) for where, t in pod_templates(doc)
             for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]]
    spec = cluster_spec(doc)
    if spec.get("enableInTreeAutoscaling"):  # KubeRay adds this sidecar; its settings are ours
        found.append(("autoscaler", {"name": "autoscaler", **spec.get("autoscalerOptions", {})}))
    return found


RAY_IDS = [f"{path.name}:{doc['kind']}" for path, doc in RAY_DOCS]


def test_cluster_folder_holds_the_expected_files():
    names = {p.name for p in CLUSTER.iterdir()}
    assert {"rayjob.yaml", "raycluster.yaml", "secret.example.yaml", "storage-config.yaml",
            "job-config.yaml", "Dockerfile", "README.md"} <= names
    assert {d["kind"] for _, _, d in DOCS} == {"RayJob", "RayCluster", "Secret", "ConfigMap"}


@pytest.mark.parametrize("path,index,doc", DOCS, ids=[f"{p.name}#{i}" for p, i, _ in DOCS])
def test_manifest_validates_against_its_schema(path, index, doc):
    assert schema_errors(doc) == []


@pytest.mark.parametrize("path,doc", RAY_DOCS, ids=RAY_IDS)
def test_operator_side_checks(path, doc):
    """KubeRay's own validation (ray-operator/controllers/ray/utils/validation.go), in brief."""
    name, kind = doc["metadata"]["name"], doc["kind"]
    assert DNS1035.match(name) and len(name) <= MAX_NAME[kind], f"{kind} name {name!r} is not allowed"
    spec = cluster_spec(doc)
    for group in [spec["headGroupSpec"]] + spec.get("workerGroupSpecs", []):
        assert group["template"]["spec"]["containers"], "every group needs a container"
        assert not (group.get("resources") and set(group["rayStartParams"]) & {"num-cpus", "num-gpus", "memory", "resources"})
        assert "labels" not in group["rayStartParams"]
    if spec.get("authOptions", {}).get("mode") == "token":
        major, minor = (int(x) for x in spec["rayVersion"].split(".")[:2])
        assert (major, minor) >= (2, 52), "token auth needs rayVersion 2.52 or later"
    if kind == "RayJob":
        job = doc["spec"]
        assert job.get("ttlSecondsAfterFinished", 0) == 0 or job.get("shutdownAfterJobFinishes")
        assert job.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES
        assert isinstance(yaml.safe_load(job.get("runtimeEnvYAML", "{}")), dict)


# ------------------------------------------------------------- the validation is not vacuous
@pytest.fixture()
def rayjob() -> dict:
    return copy.deepcopy(the("RayJob"))


def _head(doc):
    return doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def _worker_group(doc):
    return doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]


MISSPELLINGS = {
    "spec.shutdownAfterJobFinish": lambda d: d["spec"].update(shutdownAfterJobFinish=True),
    "workerGroup.minReplica": lambda d: _worker_group(d).update(minReplica=0),
    "container.securityContex": lambda d: _head(d).update(securityContex={"runAsNonRoot": True}),
    "resources.limit": lambda d: _head(d)["resources"].update(limit={"cpu": "1"}),
    "emptyDir.sizelimit": lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    ["volumes"][0]["emptyDir"].update(sizelimit="1Gi"),
    "metadata.label": lambda d: d["metadata"].update(label={"a": "b"}),
}


@pytest.mark.parametrize("mutate", MISSPELLINGS.values(), ids=MISSPELLINGS.keys())
def test_schema_rejects_a_misspelled_field(rayjob, mutate):
    mutate(rayjob)
    errors = schema_errors(rayjob)
    assert len(errors) == 1 and "Additional properties are not allowed" in errors[0], errors


WRONG_TYPES = {
    "deadline as a string": (lambda d: d["spec"].update(activeDeadlineSeconds="172800"), "is not of type 'integer'"),
    "deadline beyond int32": (lambda d: d["spec"].update(activeDeadlineSeconds=2 ** 31), "is not a 'int32'"),
    "maxReplicas as a float": (lambda d: _worker_group(d).update(maxReplicas=8.5), "is not of type 'integer'"),
    "rayStartParams value not a string": (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]
                                          ["rayStartParams"].update({"num-gpus": 0}), "is not of type 'string'"),
    "autoscaling flag as a string": (lambda d: d["spec"]["rayClusterSpec"].update(enableInTreeAutoscaling="true"),
                                     "is not of type 'boolean'"),
    "containers not a list": (lambda d: d["spec"]["submitterPodTemplate"]["spec"].update(containers={"name": "x"}),
                              "is not of type 'array'"),
    "bad quantity": (lambda d: _head(d)["resources"]["limits"].update(memory="lots"), "does not match"),
    "unknown enum value": (lambda d: d["spec"]["rayClusterSpec"]["autoscalerOptions"].update(upscalingMode="Fast"),
                           "is not one of"),
    "missing container name": (lambda d: _head(d).pop("name"), "'name' is a required property"),
    "wrong apiVersion": (lambda d: d.update(apiVersion="ray.io/v1alpha1"), "was expected"),
}


@pytest.mark.parametrize("case", WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
def test_schema_rejects_a_wrong_value(rayjob, case):
    mutate, message = case
    mutate(rayjob)
    errors = schema_errors(rayjob)
    assert errors and any(message in e for e in errors), errors


@pytest.mark.parametrize("cpu", [4, "4", "500m", "1.5"])
def test_int_or_string_quantities_accept_both(rayjob, cpu):
    _head(rayjob)["resources"]["limits"]["cpu"] = cpu
    _head(rayjob)["resources"]["requests"]["cpu"] = cpu
    assert schema_errors(rayjob) == []


@pytest.mark.parametrize("port", [8265, "dashboard"])
def test_int_or_string_ports_accept_both(rayjob, port):
    _head(rayjob)["readinessProbe"] = {"httpGet": {"path": "/", "port": port}}
    assert schema_errors(rayjob) == []


def test_schema_conversion_keeps_kubernetes_semantics():
    schema = to_draft7({
        "type": "object",
        "properties": {
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                     "properties": {"known": {"type": "integer"}}},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
            "port": {"x-kubernetes-int-or-string": True},
            "maybe": {"type": "string", "nullable": True},
            "description": {"type": "string"},  # a property may be named like a keyword
        },
    })
    v = jsonschema.Draft7Validator(schema)
    assert v.is_valid({"free": {"known": 1, "anything": {"else": True}}, "map": {"a": "b"}})
    assert not v.is_valid({"free": {"known": "one"}})  # listed fields keep their types
    assert not v.is_valid({"unknown": 1})  # closed where properties are listed
    assert not v.is_valid({"map": {"a": 1}})
    assert v.is_valid({"port": 1}) and v.is_valid({"port": "http"})
    assert not v.is_valid({"port": True}) and not v.is_valid({"port": 1.5}) and not v.is_valid({"port": []})
    assert v.is_valid({"maybe": None}) and v.is_valid({"description": "x"})
    assert not v.is_valid({"description": 3})


# -------------------------------------------------------------------------------- project policy
def security_violations(doc: dict) -> list[str]:
    """Pods and containers (the autoscaler sidecar included) that could run as root or escalate."""
    found = [f"{where}: pod securityContext.runAsNonRoot is not true" for where, template in pod_templates(doc)
             if template["spec"].get("securityContext", {}).get("runAsNonRoot") is not True]
    for where, container in containers(doc):
        sc = container.get("securityContext", {})
        caps = sc.get("capabilities", {})
        checks = {"runAsNonRoot is not true": sc.get("runAsNonRoot") is True,
                  "runAsUser is not 1000": sc.get("runAsUser") == 1000,
                  "allowPrivilegeEscalation is not false": sc.get("allowPrivilegeEscalation") is False,
                  "capabilities do not drop ALL": "ALL" in caps.get("drop", []),
                  "privileged or added capabilities": not sc.get("privileged") and not caps.get("add")}
        found += [f"{where}: {problem}" for problem, ok in checks.items() if not ok]
    return found


def secret_violations(doc: dict) -> list[str]:
    """Credentials written inline, or taken from anywhere but the Secret (non-secret AWS_* may come
    from the ConfigMap); each reference must name a key that the Secret or ConfigMap holds."""
    secret, config = the("Secret"), the("ConfigMap", "mitune-storage")
    found = []
    for where, container in containers(doc):
        found += [f"{where}: envFrom {sorted(s)}" for s in container.get("envFrom", [])
                  if not set(s) <= {"secretRef", "configMapRef", "prefix"}]
        for env in container.get("env", []):
            name = env["name"]
            credential = name in CREDENTIAL_ENV or bool(SECRET_LOOKING.search(name))
            if not (credential or name.startswith("AWS_")):
                continue
            ref = env.get("valueFrom", {})
            if "value" in env:
                found.append(f"{where}: {name} has an inline value")
            elif "secretKeyRef" in ref:
                key = ref["secretKeyRef"]
                if key["name"] != secret["metadata"]["name"] or key["key"] not in secret["stringData"]:
                    found.append(f"{where}: {name} names {key}, which the Secret template lacks")
            elif "configMapKeyRef" in ref and not credential:
                key = ref["configMapKeyRef"]
                if key["name"] != config["metadata"]["name"] or key["key"] not in config["data"]:
                    found.append(f"{where}: {name} names {key}, which the ConfigMap lacks")
            else:
                found.append(f"{where}: {name} must come from the Secret" + ("" if credential else " or ConfigMap"))
    if doc["kind"] == "RayJob":
        env_vars = yaml.safe_load(doc["spec"].get("runtimeEnvYAML", "{}")).get("env_vars", {})
        found += [f"runtimeEnvYAML: {n}" for n in env_vars if n in CREDENTIAL_ENV or SECRET_LOOKING.search(n)]
    return found


@pytest.mark.parametrize("path,doc", RAY_DOCS, ids=RAY_IDS)
def test_every_container_runs_as_non_root(path, doc):
    assert security_violations(doc) == []


@pytest.mark.parametrize("path,doc", RAY_DOCS, ids=RAY_IDS)
def test_no_secret_values_inline(path, doc):
    assert secret_violations(doc) == []


def _env(container, name):
    return next(e for e in container["env"] if e["name"] == name)


POLICY_BREAKS = {
    "inline secret": (lambda d: _env(_head(d), "AWS_SECRET_ACCESS_KEY").update(value="abc"), secret_violations),
    "credential from a ConfigMap": (lambda d: _env(_head(d), "AWS_ACCESS_KEY_ID").update(
        valueFrom={"configMapKeyRef": {"name": "mitune-storage", "key": "AWS_ENDPOINT_URL"}}), secret_violations),
    "key missing from the Secret": (lambda d: _env(_head(d), "AWS_ACCESS_KEY_ID")["valueFrom"]["secretKeyRef"]
                                    .update(key="AWS_KEY"), secret_violations),
    "token in the runtime env": (lambda d: d["spec"].update(runtimeEnvYAML="env_vars: {AWS_SESSION_TOKEN: x}"),
                                 secret_violations),
    "root submitter": (lambda d: d["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["securityContext"]
                       .update(runAsUser=0), security_violations),
    "escalating worker": (lambda d: _worker_group(d)["template"]["spec"]["containers"][0]["securityContext"]
                          .pop("allowPrivilegeEscalation"), security_violations),
    "autoscaler with capabilities": (lambda d: d["spec"]["rayClusterSpec"]["autoscalerOptions"]["securityContext"]
                                     ["capabilities"].update(add=["NET_ADMIN"]), security_violations),
}


@pytest.mark.parametrize("case", POLICY_BREAKS.values(), ids=POLICY_BREAKS.keys())
def test_policy_checks_catch_a_violation(rayjob, case):
    mutate, check = case
    assert check(rayjob) == []
    mutate(rayjob)
    assert len(check(rayjob)) == 1, check(rayjob)


@pytest.mark.parametrize("path,doc", RAY_DOCS, ids=RAY_IDS)
def test_every_ray_pod_gets_the_s3_credentials_from_the_secret(path, doc):
    for where, template in pod_templates(doc):
        if where == "submitter":
            continue  # it only talks to the dashboard
        env = {e["name"]: e for e in template["spec"]["containers"][0].get("env", [])}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "secretKeyRef" in env[name]["valueFrom"], f"{where}: {name}"
        assert env["AWS_ENDPOINT_URL"]["valueFrom"]["configMapKeyRef"]["optional"] is True, where


def test_secret_template_holds_placeholders_only():
    secret = the("Secret")
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(v.startswith("REPLACE-WITH-") for v in secret["stringData"].values())
    text = (CLUSTER / "secret.example.yaml").read_text()
    assert "never commit" in text
    assert "secret.yaml" in (CLUSTER / ".gitignore").read_text().split()
    # Nothing in cluster/ looks like a real AWS key id or secret.
    for path in (p for p in CLUSTER.rglob("*") if p.is_file()):
        assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", path.read_text()), path.name


@pytest.mark.parametrize("path,doc", RAY_DOCS, ids=RAY_IDS)
def test_gpu_group_autoscales_from_zero_and_head_has_no_gpu(path, doc):
    spec = cluster_spec(doc)
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert len(gpu_groups) == 1
    group = gpu_groups[0]
    resources = group["template"]["spec"]["containers"][0]["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert resources["requests"].get("nvidia.com/gpu", resources["limits"]["nvidia.com/gpu"]) == \
        resources["limits"]["nvidia.com/gpu"]  # Kubernetes requires equal GPU requests and limits
    assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0 and group["maxReplicas"] >= 1


def test_rayjob_has_deadlines_and_cleanup():
    job = the("RayJob")["spec"]
    assert job["activeDeadlineSeconds"] > 0
    assert job["shutdownAfterJobFinishes"] is True
    assert 0 <= job["ttlSecondsAfterFinished"] <= 3600
    assert job["backoffLimit"] >= 1  # a retry is a fresh cluster whose driver resumes from S3
    assert job["entrypointNumGpus"] == 0
    assert job["submissionMode"] in SUBMISSION_MODES


@pytest.mark.parametrize("path,doc", RAY_DOCS, ids=RAY_IDS)
def test_dev_shm_is_memory_backed(path, doc):
    for where, template in pod_templates(doc):
        if where == "submitter":
            continue
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in template["spec"]["containers"][0]["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", where


def test_one_image_everywhere_tagged_with_the_package_version():
    images = {c["image"] for _, doc in RAY_DOCS for where, c in containers(doc) if where != "autoscaler"}
    assert len(images) == 1, images
    image = images.pop()
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert image.endswith(f"/mitune-ray:{version}")
    assert f"docker build -f cluster/Dockerfile -t {image} ." in (CLUSTER / "Dockerfile").read_text()


def test_dockerfile_matches_the_manifests_and_bakes_in_no_secret():
    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\S+)-py311-gpu$", text, re.M)
    assert base, "the base image must be Ray's Python 3.11 GPU image"
    versions = {cluster_spec(doc)["rayVersion"] for _, doc in RAY_DOCS}
    assert versions == {base.group(1)}
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_pin = next(p for p in pins if p.startswith("ray["))
    assert f">={'.'.join(base.group(1).split('.')[:2])}" in ray_pin  # the image's Ray is the pinned one
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] == "1000"  # numeric, so runAsNonRoot can verify it
    assert any("DS_BUILD_OPS=0" in line and "deepspeed" in line for line in instructions)
    # The package itself, with the trackers a job can turn on (tracking.tensorboard / mlflow).
    assert any(re.search(r'pip install .* "\.\[tracking\]"( |$)', line) for line in instructions)
    for line in instructions:
        if line.split()[0] in ("ENV", "ARG"):
            assert not re.search(r"AWS_|SECRET|PASSWORD|TOKEN", line), line
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "cluster/secret.yaml"} <= set(ignored)


def test_raycluster_is_the_rayjobs_cluster():
    assert the("RayCluster")["spec"] == the("RayJob")["spec"]["rayClusterSpec"]


def expand_entrypoint(entrypoint: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """What the RayJob's submitter pod does with the entrypoint: its bash expands it (KubeRay puts
    the entrypoint verbatim into `bash -c "... ray job submit ... -- ENTRYPOINT"`) and `ray job
    submit` quotes each resulting word; here bash prints the words, one per NUL."""
    return subprocess.run(["bash", "-c", f"printf '%s\\0' {entrypoint}"], capture_output=True,
                          text=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
                          timeout=30)


def submitter_env(job: dict) -> dict[str, dict]:
    container = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    return {e["name"]: e for e in container.get("env", [])}


def test_rayjob_runs_the_config_and_overrides_of_the_job_configmap():
    job = the("RayJob")
    env = the("ConfigMap", "mitune-job")["data"]
    # The submitter gets both values from the ConfigMap: nothing about the run is in the image.
    for name in ("MITUNE_CONFIG", "MITUNE_OVERRIDES"):
        ref = submitter_env(job)[name]["valueFrom"]["configMapKeyRef"]
        assert (ref["name"], ref["key"]) == ("mitune-job", name)
    expanded = expand_entrypoint(job["spec"]["entrypoint"], env)
    assert expanded.returncode == 0, expanded.stderr
    tokens = expanded.stdout.split("\0")[:-1]
    assert tokens[:4] == ["python", "-m", "mitune_ray.cli", "run"]
    config_path, overrides = REPO / tokens[4], tokens[5:]
    assert tokens[4] == env["MITUNE_CONFIG"] and overrides == env["MITUNE_OVERRIDES"].split()
    assert {o.split("=", 1)[0] for o in overrides} == {"run.uri", "model.path"}
    cfg = load_config(config_path, overrides)  # every override is a valid key and value
    # The same run has the same id whether it is submitted by KubeRay or by hand.
    assert job["spec"]["jobId"] == submit_command(config_path).options["--submission-id"]
    assert job["spec"]["jobId"] == "mitune-" + cfg.run.uri.rstrip("/").rsplit("/", 1)[-1]
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == "/home/ray/mitune"  # WORKDIR of cluster/Dockerfile
    assert "WORKDIR /home/ray/mitune" in (CLUSTER / "Dockerfile").read_text()
    gpu_group = _worker_group(job)
    gpus = int(gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    capacity = gpu_group["maxReplicas"] * gpus
    assert capacity >= cfg.generate.actors * cfg.generate.gpus_per_actor
    assert capacity >= cfg.train.workers and capacity >= cfg.eval.actors


def test_a_config_file_in_the_configmap_reaches_the_driver_and_odd_overrides_stay_whole():
    job = the("RayJob")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head["volumes"]}
    mounts = {m["mountPath"]: m for m in head["containers"][0]["volumeMounts"]}
    mount = mounts["/etc/mitune"]
    assert volumes[mount["name"]]["configMap"]["name"] == "mitune-job" and mount["readOnly"] is True
    expanded = expand_entrypoint(job["spec"]["entrypoint"], {
        "MITUNE_CONFIG": "/etc/mitune/my run.yaml",  # a key of the ConfigMap, as a file on the head
        "MITUNE_OVERRIDES": "prompts.train=[bundled:t2i-compbench/color_train] run.rounds=2"})
    assert expanded.stdout.split("\0")[4:-1] == [
        "/etc/mitune/my run.yaml", "prompts.train=[bundled:t2i-compbench/color_train]",
        "run.rounds=2"]


def test_without_the_configmap_the_submitter_stops_with_the_fix():
    job = the("RayJob")
    assert submitter_env(job)["MITUNE_CONFIG"]["valueFrom"]["configMapKeyRef"]["optional"] is True
    expanded = expand_entrypoint(job["spec"]["entrypoint"], {})
    assert expanded.returncode != 0 and expanded.stdout == ""
    assert "set MITUNE_CONFIG in the mitune-job ConfigMap: kubectl apply -f cluster/job-config.yaml" \
        in expanded.stderr
