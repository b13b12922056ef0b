"""How much user-data the clouds take (bytes of raw, not base64, user-data), and the ways to
compress it."""

EC2_LIMIT = 16384
OPENSTACK_LIMIT = 65535
GZIP_MODES = ("auto", "always", "never")
