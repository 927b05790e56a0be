"""The AWS target of `ansible-playbook site.yml`, run offline against a real moto server.

The command is the one the Ansible issue prescribes (plays needing SSH skipped); the checks read
back what exists with boto3: two servers, IMDSv2 everywhere, a worker launch template that
terminates on shutdown and uses the baked image, no world-open or worker ingress, a
least-privilege server policy. A second run changes nothing; teardown leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
CLUSTER = "dynwork"
CLIENT_CIDR = "203.0.113.0/24"
ADMIN_CIDR = "198.51.100.0/24"
RUN_TIMEOUT_S = 600

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason="ansible-playbook is not installed next to python"),
]


@pytest.fixture(scope="module")
def moto_url():
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def aws(moto_url):
    """boto3 clients for the moto server (created only after it started)."""

    def client(service: str):
        return boto3.client(
            service,
            endpoint_url=moto_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    return {name: client(name) for name in ("ec2", "iam")}


def run_playbook(moto_url: str, *args: str, tool: Path = ANSIBLE_PLAYBOOK) -> subprocess.CompletedProcess:
    """ansible-playbook with exactly the environment the issue names, and nothing of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DYNWORK_", "ANSIBLE_"))}
    env.update(
        AWS_ENDPOINT_URL=moto_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return subprocess.run([str(tool), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def deploy(moto_url: str, *extra: str) -> subprocess.CompletedProcess:
    return run_playbook(moto_url, "-i", "inventory/aws", "site.yml", "--skip-tags", "ssh", *extra)


def recap_changed(stdout: str) -> dict[str, int]:
    found = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", stdout, re.M)}
    assert found, f"no PLAY RECAP in output:\n{stdout[-3000:]}"
    return found


def explain(result: subprocess.CompletedProcess) -> str:
    return (
        f"rc={result.returncode}\n--- stdout (tail)\n{result.stdout[-6000:]}\n"
        f"--- stderr (tail)\n{result.stderr[-3000:]}"
    )


def cluster_instances(ec2) -> list[dict]:
    pages = ec2.describe_instances(
        Filters=[
            {"Name": "tag:dynwork:cluster", "Values": [CLUSTER]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
        ]
    )["Reservations"]
    return [inst for r in pages for inst in r["Instances"]]


def tags(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


# -- refused inputs: nothing is created ------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        ((), "needs -e dynwork_client_cidr"),
        (("-e", "client_cidr=0.0.0.0/0", "-e", f"admin_cidr={ADMIN_CIDR}"), "allow_world=true"),
        (("-e", f"client_cidr={CLIENT_CIDR}", "-e", "admin_cidr=198.51.100.0"), "not an IPv4 CIDR block"),
    ],
)
def test_bad_or_missing_cidrs_fail_before_anything_is_created(moto_url, aws, extra, message):
    result = deploy(moto_url, *extra)
    assert result.returncode != 0, explain(result)
    assert message in result.stdout, explain(result)
    assert (
        aws["ec2"].describe_security_groups(Filters=[{"Name": "tag:dynwork:cluster", "Values": [CLUSTER]}])[
            "SecurityGroups"
        ]
        == []
    )


# -- the deployment ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(moto_url):
    result = deploy(moto_url, "-e", f"client_cidr={CLIENT_CIDR}", "-e", f"admin_cidr={ADMIN_CIDR}")
    assert result.returncode == 0, explain(result)
    assert recap_changed(result.stdout)["localhost"] > 0
    return result


def test_two_servers_with_imdsv2_and_the_instance_profile(deployed, aws):
    instances = cluster_instances(aws["ec2"])
    servers = [i for i in instances if tags(i).get("dynwork:role") == "server"]
    assert sorted(tags(i)["dynwork:server"] for i in servers) == ["s1", "s2"]
    assert all(i["MetadataOptions"]["HttpTokens"] == "required" for i in instances)
    assert all(i["IamInstanceProfile"]["Arn"].endswith(f":instance-profile/{CLUSTER}-server") for i in servers)
    # The image builder is gone once the image exists; no worker runs before a server asks.
    assert {tags(i).get("dynwork:role") for i in instances} == {"server"}


def test_launch_template_uses_the_baked_image_imdsv2_and_terminates_on_shutdown(deployed, aws):
    ec2 = aws["ec2"]
    (image,) = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [f"{CLUSTER}-worker-v*"]}])[
        "Images"
    ]
    assert tags(image)["dynwork:cluster"] == CLUSTER
    version = ec2.describe_launch_template_versions(LaunchTemplateName=f"{CLUSTER}-worker", Versions=["$Default"])[
        "LaunchTemplateVersions"
    ][0]
    data = version["LaunchTemplateData"]
    assert data["ImageId"] == image["ImageId"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert "IamInstanceProfile" not in data  # workers get no IAM role at all
    assert "KeyName" not in data
    (worker_sg,) = ec2.describe_security_groups(GroupNames=[f"{CLUSTER}-worker"])["SecurityGroups"]
    (nic,) = data["NetworkInterfaces"]
    assert nic["Groups"] == [worker_sg["GroupId"]] and nic["AssociatePublicIpAddress"] is False


def test_security_groups_no_world_ingress_and_nothing_into_workers(deployed, aws):
    groups = aws["ec2"].describe_security_groups(Filters=[{"Name": "tag:dynwork:cluster", "Values": [CLUSTER]}])[
        "SecurityGroups"
    ]
    by_role = {tags(g)["dynwork:role"]: g for g in groups}
    assert set(by_role) == {"server", "worker", "image-builder"}
    for group in groups:
        for perm in group["IpPermissions"]:
            assert all(r["CidrIp"] != "0.0.0.0/0" for r in perm.get("IpRanges", [])), group["GroupName"]
            assert all(r["CidrIpv6"] != "::/0" for r in perm.get("Ipv6Ranges", [])), group["GroupName"]
    assert by_role["worker"]["IpPermissions"] == []
    server, worker = by_role["server"], by_role["worker"]
    rules = {
        (p["FromPort"], p["ToPort"], src)
        for p in server["IpPermissions"]
        for src in [r["CidrIp"] for r in p.get("IpRanges", [])] + [g["GroupId"] for g in p.get("UserIdGroupPairs", [])]
    }
    assert rules == {
        (22, 22, ADMIN_CIDR),
        (8001, 8001, CLIENT_CIDR),
        (8001, 8001, server["GroupId"]),
        (8001, 8001, worker["GroupId"]),
    }
    # the image builder has its own group: SSH from the admin CIDR, nothing else
    assert [
        (p["FromPort"], [r["CidrIp"] for r in p["IpRanges"]]) for p in by_role["image-builder"]["IpPermissions"]
    ] == [(22, [ADMIN_CIDR])]


def test_server_policy_is_least_privilege(deployed, aws):
    iam = aws["iam"]
    role = f"{CLUSTER}-server"
    assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []  # no managed policies
    (name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    if isinstance(document, str):
        document = json.loads(document)
    statements = document["Statement"]
    actions = [a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]
    assert all("*" not in a for a in actions), actions
    assert all(s["Effect"] == "Allow" for s in statements)
    (terminate,) = [s for s in statements if "ec2:TerminateInstances" in s["Action"]]
    assert terminate["Condition"]["StringEquals"] == {
        "ec2:ResourceTag/dynwork:cluster": CLUSTER,
        "ec2:ResourceTag/dynwork:role": "worker",
    }
    run = [s for s in statements if "ec2:RunInstances" in s["Action"]]
    assert run and all("ec2:LaunchTemplate" in s["Condition"]["ArnLike"] for s in run)
    (profile,) = iam.list_instance_profiles_for_role(RoleName=role)["InstanceProfiles"]
    assert profile["InstanceProfileName"] == f"{CLUSTER}-server"


def test_key_pair_and_cluster_token(deployed, aws):
    (key,) = aws["ec2"].describe_key_pairs(KeyNames=[CLUSTER])["KeyPairs"]
    assert tags(key)["dynwork:cluster"] == CLUSTER
    token = ROOT / ".secrets" / CLUSTER / "cluster.token"
    assert token.stat().st_mode & 0o777 == 0o600
    assert len(token.read_text().strip()) >= 32
    assert "*.token" in (ROOT / ".gitignore").read_text() and ".secrets/" in (ROOT / ".gitignore").read_text()


def test_inventory_gives_each_server_its_peer_and_a_loadable_config(deployed, moto_url, aws, tmp_path):
    """The SSH plays are skipped offline, but the config they would write can be rendered here:
    the aws_ec2 inventory finds s1 and s2 by tag and group_vars give each the other as peer."""
    from server.config import load_settings

    result = run_playbook(
        moto_url,
        "-i",
        "inventory/aws",
        "dynwork_servers",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-e",
        "server_max_workers=5",
        "-e",
        "server_worker_idle_s=60",
        "-e",
        '{"server_metrics": true, "server_metrics_auth": false, "server_log_format": "text"}',  # role defaults
        "-m",
        "ansible.builtin.template",
        "-a",
        f"src=roles/server/templates/etc/dynwork/server.toml.j2 dest={tmp_path}/{{{{ inventory_hostname }}}}.toml",
        tool=ANSIBLE_PLAYBOOK.parent / "ansible",
    )
    assert result.returncode == 0, explain(result)
    private = {tags(i)["dynwork:server"]: i["PrivateIpAddress"] for i in cluster_instances(aws["ec2"])}
    for name, other in (("s1", "s2"), ("s2", "s1")):
        settings = load_settings(["--config", str(tmp_path / f"{name}.toml")], environ={})
        assert settings.server_name == name
        assert settings.url == f"http://{private[name]}:8001"
        assert settings.peer == f"http://{private[other]}:8001"
        assert (settings.launcher, settings.launch_template, settings.cluster) == ("ec2", f"{CLUSTER}-worker", CLUSTER)
        assert str(settings.token_file) == "/etc/dynwork/cluster.token" and settings.aws_region == "us-east-1"


def test_second_run_changes_nothing(deployed, moto_url, aws):
    result = deploy(moto_url, "-e", f"client_cidr={CLIENT_CIDR}", "-e", f"admin_cidr={ADMIN_CIDR}")
    assert result.returncode == 0, explain(result)
    assert recap_changed(result.stdout) == {"localhost": 0}, explain(result)
    assert len(cluster_instances(aws["ec2"])) == 2


def test_policies_attached_by_hand_are_removed(deployed, moto_url, aws):
    """The fleet policy is the role's only permission: an inline or managed policy added by hand
    (say while debugging) is gone after the next run."""
    iam, role = aws["iam"], f"{CLUSTER}-server"
    wide = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ec2:*", "Resource": "*"}]})
    iam.put_role_policy(RoleName=role, PolicyName="by-hand", PolicyDocument=wide)
    managed = iam.create_policy(PolicyName="by-hand-managed", PolicyDocument=wide)["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=role, PolicyArn=managed)
    result = deploy(moto_url, "-e", f"dynwork_client_cidr={CLIENT_CIDR}", "-e", f"dynwork_admin_cidr={ADMIN_CIDR}")
    assert result.returncode == 0, explain(result)
    assert iam.list_role_policies(RoleName=role)["PolicyNames"] == [f"{CLUSTER}-server-fleet"]
    assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []
    iam.delete_policy(PolicyArn=managed)


def test_teardown_leaves_nothing_of_the_cluster(deployed, moto_url, aws):
    ec2, iam = aws["ec2"], aws["iam"]
    # A worker a server launched from the template must go too.
    ec2.run_instances(
        LaunchTemplate={"LaunchTemplateName": f"{CLUSTER}-worker"},
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": "dynwork:cluster", "Value": CLUSTER}, {"Key": "dynwork:role", "Value": "worker"}],
            }
        ],
    )
    result = run_playbook(moto_url, "-i", "inventory/aws", "playbooks/teardown.yml")
    assert result.returncode == 0, explain(result)
    by_tag = [{"Name": "tag:dynwork:cluster", "Values": [CLUSTER]}]
    assert cluster_instances(ec2) == []
    assert ec2.describe_images(Owners=["self"])["Images"] == []
    assert ec2.describe_snapshots(OwnerIds=["self"], Filters=by_tag)["Snapshots"] == []
    assert ec2.describe_security_groups(Filters=by_tag)["SecurityGroups"] == []
    assert ec2.describe_key_pairs(Filters=by_tag)["KeyPairs"] == []
    # (moto keeps the tags of a deleted launch template in DescribeTags, so ask for templates)
    assert [t["LaunchTemplateName"] for t in ec2.describe_launch_templates()["LaunchTemplates"]] == []
    with pytest.raises(ClientError):
        iam.get_role(RoleName=f"{CLUSTER}-server")
    with pytest.raises(ClientError):
        iam.get_instance_profile(InstanceProfileName=f"{CLUSTER}-server")
