import re
import sys
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"
LOCK = REPO / "requirements" / "lock.txt"


def locked_versions() -> tuple[str, tuple[int, int]]:
    """Return (Ray version, (major, minor) of Python) pinned by requirements/lock.txt."""
    text = LOCK.read_text()
    ray_pin = re.search(r"^ray==(\S+)$", text, re.MULTILINE)
    python_pin = re.search(r"^#.*\bpython (\d+)\.(\d+)\b", text, re.MULTILINE)
    assert ray_pin and python_pin, f"{LOCK} lacks a ray== pin or its '# ... python X.Y' header line"
    return ray_pin.group(1), (int(python_pin.group(1)), int(python_pin.group(2)))


@pytest.fixture(scope="module")
def raw_config():
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared_config(raw_config):
    return prepare_config(raw_config)


def test_cluster_yaml_passes_rays_own_schema(prepared_config):
    validate_config(prepared_config)


def test_schema_check_catches_a_typo(raw_config):
    import jsonschema

    broken = {**raw_config, "idle_timout_minutes": 5}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_head_node_type_exists_and_has_no_gpu(raw_config):
    head = raw_config["available_node_types"][raw_config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0


def test_gpu_worker_types_advertise_a100_gpus(raw_config):
    workers = {k: v for k, v in raw_config["available_node_types"].items()
               if k != raw_config["head_node_type"]}
    gpu_types = {k: v for k, v in workers.items() if v["node_config"]["InstanceType"] == "p4d.24xlarge"}
    assert gpu_types, "no p4d.24xlarge worker type"
    for node_type in gpu_types.values():
        assert node_type["resources"]["GPU"] == 8
        assert "accelerator_type:A100" in node_type["resources"]


def test_a_spot_worker_type_exists(raw_config):
    markets = [v["node_config"].get("InstanceMarketOptions", {}).get("MarketType")
               for v in raw_config["available_node_types"].values()]
    assert "spot" in markets


def test_docker_images_match_the_locked_ray_and_python(raw_config):
    ray_version, python_version = locked_versions()
    docker = raw_config["docker"]
    images = [docker[k] for k in ("image", "head_image", "worker_image") if k in docker]
    assert images
    for image in images:
        match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(cpu|gpu|cu\d+)", image)
        assert match, f"unexpected image tag {image}"
        assert match.group(1) == ray_version, f"{image} vs ray=={ray_version} in {LOCK.name}"
        assert (int(match.group(2)), int(match.group(3))) == python_version, image


def test_installed_ray_and_python_are_the_locked_ones():
    # A Ray client must match the cluster's Ray exactly; install with -c requirements/lock.txt.
    ray_version, python_version = locked_versions()
    assert ray.__version__ == ray_version
    assert sys.version_info[:2] == python_version


def test_setup_installs_this_project_from_its_file_mount(raw_config):
    (mount,) = [remote for remote, local in raw_config["file_mounts"].items() if local == "."]
    assert any("pip install" in cmd and mount in cmd for cmd in raw_config["setup_commands"])


def test_every_node_gets_the_local_token_where_ray_reads_it(raw_config):
    from ray._private.authentication.authentication_token_setup import _get_default_token_path

    # Local default path -> the same path under the container user's home (rayproject images: /home/ray).
    default = _get_default_token_path().relative_to(Path.home())
    mounts = raw_config["file_mounts"]
    assert mounts.get(f"/home/ray/{default}") == f"~/{default}"


def test_every_ray_start_requires_the_token(raw_config):
    starts = [cmd for key in ("head_start_ray_commands", "worker_start_ray_commands")
              for cmd in raw_config[key] if "ray start" in cmd]
    assert len(starts) == 2
    assert all("RAY_AUTH_MODE=token ray start" in cmd for cmd in starts)


def test_nodes_install_the_locked_versions(raw_config):
    (mount,) = [remote for remote, local in raw_config["file_mounts"].items() if local == "."]
    lock = f"-c {mount}/requirements/lock.txt"
    installs = [cmd for cmd in raw_config["setup_commands"] if "pip install" in cmd]
    assert installs and all(lock in cmd for cmd in installs), installs


SECRET_PATTERNS = [
    r"AKIA[0-9A-Z]{16}",                       # AWS access key id
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"(?i)\b(secret|token|password|passwd|api_?key|access_key)\w*\s*[:=]\s*\S",
    r"(?i)ssh_private_key|KeyName",
    r"[A-Za-z0-9/+]{40}",                      # AWS secret access key shape
]


@pytest.mark.parametrize("pattern", SECRET_PATTERNS)
def test_cluster_yaml_holds_no_credentials(pattern):
    assert not re.search(pattern, CLUSTER_YAML.read_text())


def test_cluster_extra_pins_the_locked_ray():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    ray_version, _ = locked_versions()
    assert f"ray[default]=={ray_version}" in extras["cluster"]

def test_a100_preset_workers_request_the_declared_accelerator_resource(raw_config):
    from tune.presets import PRESETS

    wanted = f"accelerator_type:{PRESETS['pcam-a100'].trial['finetune.accelerator_type']}"
    provided = [t["resources"] for t in raw_config["available_node_types"].values()]
    assert any(wanted in resources for resources in provided)
