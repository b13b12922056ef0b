"""Cloud backends: where worker VMs run (EC2 API, local qemu), used by `vfarm launch` and `vfarm scale`."""
