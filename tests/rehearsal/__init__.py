"""The offline rehearsal of the AWS deployment (tests/test_aws_rehearsal.py).

moto plays the AWS APIs; every instance moto launches is stood in by a Debian 12 rootfs booted
with systemd in its own PID/mount/UTS/IPC/cgroup namespaces, on its own loopback address.

- host.py     what the host needs (root, unshare, cgroup v2, Debian packages) and the cache dir
- rootfs.py   the base "AMI" (mmdebstrap, cached) and the wheelhouse the stand-ins install from
- standin.py  one booted rootfs: overlay layers, namespaces, systemd as PID 1, stop, cleanup
- imds.py     a per-instance IMDSv2 endpoint: user-data, instance id, role credentials
- cloud.py    the hypervisor behind moto: boots, stops, images and terminates stand-ins as the
              EC2 calls arrive, maps instance addresses to 127.0.0.N, injects AWS's delays
- motogaps.py  EC2 calls the roles make that moto lacks (DeleteLaunchTemplateVersions)
- controller.py  a committed copy of the working tree and ansible-playbook against it
"""
