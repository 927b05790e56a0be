"""Fast checks of the Ansible roles' logic, without AWS or SSH.

The server fleet policy is rendered from the aws_iam role's own files with Ansible's templar and
checked against the rules IAM applies: every condition key of a RunInstances statement must exist
for every resource type the statement lists (an absent key fails StringEquals and so refuses
every launch), and the launch must be pinned to what the launch template gives. Also: the region
lookup's precedence, and that every role documents and validates its variables.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if p.is_dir())
INPUTS = dict(
    dynwork_server_role="c-server",
    dynwork_cluster="c",
    dynwork_aws_region="eu-west-1",
    aws_preflight_account="123456789012",
    aws_preflight_partition="aws",
    aws_launch_template_id="lt-0abc",
    aws_launch_template_instance_type="c7i.large",
    aws_image_id="ami-0abc",
    aws_network_vpc_id="vpc-0abc",
    aws_network_subnet_id="subnet-0abc",
    aws_network_worker_sg_id="sg-0abc",
)
ARN = "arn:aws:ec2:eu-west-1:123456789012"
TEMPLATE_ARN = f"{ARN}:launch-template/lt-0abc"
# Condition keys IAM evaluates for each resource type of ec2:RunInstances (the subset this policy
# uses; Service Authorization Reference, Amazon EC2, RunInstances). aws:RequestTag applies to the
# resources created with tags: instances and volumes.
RUN_INSTANCES_KEYS = {
    "instance": {
        "ec2:LaunchTemplate",
        "ec2:InstanceType",
        "ec2:MetadataHttpTokens",
        "ec2:IsLaunchTemplateResource",
        "aws:RequestTag",
    },
    "volume": {"ec2:LaunchTemplate", "ec2:IsLaunchTemplateResource", "aws:RequestTag"},
    "launch-template": {"ec2:LaunchTemplate", "ec2:IsLaunchTemplateResource"},
    "image": {"ec2:LaunchTemplate", "ec2:IsLaunchTemplateResource"},
    "subnet": {"ec2:LaunchTemplate", "ec2:IsLaunchTemplateResource", "ec2:Vpc"},
    "security-group": {"ec2:LaunchTemplate", "ec2:IsLaunchTemplateResource", "ec2:Vpc"},
    "network-interface": {"ec2:LaunchTemplate", "ec2:IsLaunchTemplateResource", "ec2:Vpc"},
}


def render_fleet_policy() -> dict:
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    def trusted(value):
        if isinstance(value, str):
            return trust_as_template(value)
        if isinstance(value, dict):
            return {k: trusted(v) for k, v in value.items()}
        if isinstance(value, list):
            return [trusted(v) for v in value]
        return value

    loader = DataLoader()
    defaults = trusted(loader.load_from_file(str(ROOT / "roles/aws_iam/defaults/main.yml")))
    variables = trusted(loader.load_from_file(str(ROOT / "roles/aws_iam/vars/main.yml")))
    templar = Templar(loader=loader, variables={**defaults, **variables, **INPUTS})
    return templar.template(variables["aws_iam_fleet_policy"])


@pytest.fixture(scope="module")
def statements() -> list[dict]:
    return render_fleet_policy()["Statement"]


def resource_type(arn: str) -> str:
    return arn.split(":", 5)[5].split("/", maxsplit=1)[0]


def condition_keys(statement: dict) -> set[str]:
    keys = {key for block in statement.get("Condition", {}).values() for key in block}
    return {"aws:RequestTag" if key.startswith("aws:RequestTag/") else key for key in keys}


def test_every_run_instances_condition_exists_for_every_resource_it_lists(statements):
    run = [s for s in statements if s["Action"] == ["ec2:RunInstances"]]
    covered = set()
    for statement in run:
        for arn in statement["Resource"]:
            kind = resource_type(arn)
            covered.add(kind)
            missing = condition_keys(statement) - RUN_INSTANCES_KEYS[kind]
            assert not missing, f"{statement['Sid']}: {sorted(missing)} absent for {kind} resources"
            assert statement["Condition"]["ArnLike"]["ec2:LaunchTemplate"] == TEMPLATE_ARN
    assert covered == set(RUN_INSTANCES_KEYS), covered  # every resource a launch touches is allowed


def test_a_launch_cannot_override_the_template(statements):
    by_sid = {s["Sid"]: s for s in statements}
    instance = by_sid["LaunchWorkerInstances"]["Condition"]["StringEquals"]
    assert instance["ec2:InstanceType"] == "c7i.large" and instance["ec2:MetadataHttpTokens"] == "required"
    assert instance["aws:RequestTag/dynwork:cluster"] == "c" and instance["aws:RequestTag/dynwork:role"] == "worker"
    network = by_sid["UseTheTemplateNetwork"]
    assert sorted(network["Resource"]) == sorted(
        [f"{ARN}:subnet/subnet-0abc", f"{ARN}:security-group/sg-0abc", f"{ARN}:network-interface/*"]
    )
    assert network["Condition"]["ArnLike"]["ec2:Vpc"] == f"{ARN}:vpc/vpc-0abc"
    for sid in ("UseTheTemplateNetwork", "UseTheTemplateImage"):
        assert by_sid[sid]["Condition"]["Bool"] == {"ec2:IsLaunchTemplateResource": "true"}
    assert by_sid["UseTheTemplateImage"]["Resource"] == ["arn:aws:ec2:eu-west-1::image/ami-0abc"]


def test_no_wildcard_actions_and_terminate_only_the_clusters_workers(statements):
    assert all("*" not in action for s in statements for action in s["Action"])
    assert [s["Resource"] for s in statements if s["Resource"] == "*"] == ["*"]  # DescribeInstances alone
    (terminate,) = [s for s in statements if s["Action"] == ["ec2:TerminateInstances"]]
    assert terminate["Condition"]["StringEquals"] == {
        "ec2:ResourceTag/dynwork:cluster": "c",
        "ec2:ResourceTag/dynwork:role": "worker",
    }
    (tag,) = [s for s in statements if s["Action"] == ["ec2:CreateTags"]]
    assert tag["Condition"] == {"StringEquals": {"ec2:CreateAction": "RunInstances"}}


def test_region_lookup_prefers_the_environment_then_the_profile_then_the_default():
    spec = importlib.util.spec_from_file_location("region", ROOT / "plugins/lookup/dynwork_aws_region.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    resolve = module.resolve_region
    profile = lambda: "ap-south-1"  # noqa: E731 - a profile that names a region
    assert resolve({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"}, profile) == "eu-west-1"
    assert resolve({"AWS_DEFAULT_REGION": "us-west-2"}, profile) == "us-west-2"
    assert resolve({}, profile) == "ap-south-1"
    assert resolve({}, lambda: None) == "us-east-1"


def test_verify_waits_long_enough_for_a_cold_worker():
    """On AWS the probe waits for RunInstances, a cold boot from the snapshot and the bootstrap."""
    defaults = yaml.safe_load((ROOT / "roles/verify/defaults/main.yml").read_text())
    tasks = (ROOT / "roles/verify/tasks/main.yml").read_text()
    assert defaults["verify_timeout_s"] >= 600
    assert "verify_timeout_s" in tasks and "verify_polls" not in tasks


@pytest.mark.parametrize("role", ROLES)
def test_role_has_meta_argument_specs_and_readme(role):
    path = ROOT / "roles" / role
    meta = yaml.safe_load((path / "meta/main.yml").read_text())
    assert meta["galaxy_info"]["role_name"] == role and meta["dependencies"] == []
    assert (path / "README.md").read_text().startswith(f"# {role}\n")
    specs = yaml.safe_load((path / "meta/argument_specs.yml").read_text())["argument_specs"]
    documented = {name for entry in specs.values() for name in (entry.get("options") or {})}
    defaults_file = path / "defaults/main.yml"
    defaults = set(yaml.safe_load(defaults_file.read_text()) or {}) if defaults_file.exists() else set()
    assert defaults <= documented, f"undocumented in argument_specs: {sorted(defaults - documented)}"
    entry_points = {p.stem for p in (path / "tasks").glob("*.yml")}
    assert set(specs) <= entry_points


def test_a_mistyped_service_manager_fails_instead_of_matching_nothing(tmp_path):
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "server role with a typo",
                    "hosts": "s8001",
                    "gather_facts": False,
                    "roles": [{"role": "server"}],
                }
            ]
        )
    )
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), str(playbook), "-e", "server_service_manager=sytemd"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "ANSIBLE_ROLES_PATH": str(ROOT / "roles")},
    )
    assert result.returncode != 0
    assert "server_service_manager" in result.stdout and "sytemd" in result.stdout, result.stdout[-3000:]
