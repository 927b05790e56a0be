"""EC2 calls the deployment makes that moto does not implement, added for the rehearsal.

- DeleteLaunchTemplateVersions: `ec2_launch_template state=absent` deletes the non-default
  versions before the template; after a code change the template has two.
"""

from __future__ import annotations

import contextlib
from unittest import mock

from moto.core.responses import ActionResult
from moto.ec2.responses.launch_templates import LaunchTemplates


def _delete_launch_template_versions(self) -> ActionResult:
    name, tid = self._get_param("LaunchTemplateName"), self._get_param("LaunchTemplateId")
    wanted = {int(v) for v in (self._get_param("Versions") or self._get_param("LaunchTemplateVersion") or [])}
    template = self.ec2_backend.get_launch_template(tid) if tid else self.ec2_backend.get_launch_template_by_name(name)
    deleted = [v for v in template.versions if v.number in wanted and not template.is_default(v)]
    template.versions = [v for v in template.versions if v not in deleted]
    return ActionResult(
        {
            "SuccessfullyDeletedLaunchTemplateVersions": [
                {"LaunchTemplateId": template.id, "LaunchTemplateName": template.name, "VersionNumber": v.number}
                for v in deleted
            ],
            "UnsuccessfullyDeletedLaunchTemplateVersions": [],
        }
    )


@contextlib.contextmanager
def filled():
    with mock.patch.object(
        LaunchTemplates, "delete_launch_template_versions", _delete_launch_template_versions, create=True
    ):
        yield
