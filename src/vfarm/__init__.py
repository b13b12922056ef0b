"""vfarm: cloud-init plugins and a command line that turn cloud VMs into HEP batch workers."""

__version__ = "0.1.0"
