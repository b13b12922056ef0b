"""How much user-data the clouds take (bytes of raw, not base64, user-data), and the ways to
compress it."""

EC2_LIMIT = 16384
# Nova takes at most 65535 characters of base64 (its API schema's maxLength of user_data): 49149
# bytes before encoding (tests/test_openstack.py asks the real Nova).
OPENSTACK_B64_LIMIT = 65535
OPENSTACK_LIMIT = OPENSTACK_B64_LIMIT // 4 * 3
GZIP_MODES = ("auto", "always", "never")
