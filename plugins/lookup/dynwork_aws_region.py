"""Lookup `dynwork_aws_region`: the AWS region the way the AWS SDKs resolve it.

AWS_REGION, then AWS_DEFAULT_REGION, then the region of the active profile (AWS_PROFILE or
default, from ~/.aws/config via boto3), then the `default` option. The inventory and the plays
use it so that both always talk to the same region, whichever way the operator configured it.
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

DOCUMENTATION = r"""
name: dynwork_aws_region
short_description: the AWS region as the AWS SDKs resolve it
description:
  - Returns AWS_REGION, else AWS_DEFAULT_REGION, else the region of the active AWS profile
    (AWS_PROFILE or the default profile), else O(default).
options:
  default:
    description: Region returned when nothing else names one.
    type: str
    default: us-east-1
"""

EXAMPLES = r"""
- name: Show the region
  ansible.builtin.debug:
    msg: "{{ lookup('dynwork_aws_region') }}"
"""

RETURN = r"""
_raw:
  description: One region name.
  type: list
  elements: str
"""


def resolve_region(environ: dict[str, str], profile_region=None, default: str = "us-east-1") -> str:
    """The first of AWS_REGION, AWS_DEFAULT_REGION, the profile's region and `default`."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if environ.get(name):
            return environ[name]
    region = profile_region() if profile_region is not None else None
    return region or default


def _profile_region() -> str | None:
    try:
        import boto3
    except ImportError:  # amazon.aws needs boto3 anyway; without it only the environment counts
        return None
    try:
        return boto3.session.Session().region_name
    except Exception as exc:  # e.g. ProfileNotFound: say so instead of picking a region silently
        raise AnsibleLookupError(f"cannot read the AWS profile's region: {exc}") from exc


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        return [resolve_region(dict(os.environ), _profile_region, self.get_option("default"))]
