"""A cloud's own words, as an error message may quote them."""

from __future__ import annotations

import re

# At most QUOTED_LIMIT characters, and no run of base64 over 64 characters: a validator may quote
# a rejected user_data in full (Nova's does, twice: 200 KB of base64 with the pool's token inside;
# an EC2-compatible cloud may too). Neither a token nor user-data belongs in a message.
QUOTED_LIMIT = 300
BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{65,}=*")


def cloud_words(text: str) -> str:
    """TEXT on one line, every base64 run over 64 characters left out, at most QUOTED_LIMIT characters."""
    text = BASE64_RUN.sub(lambda m: f"[{len(m.group())} characters left out]", " ".join(text.split()))
    return text if len(text) <= QUOTED_LIMIT else f"{text[:QUOTED_LIMIT]}... [{len(text) - QUOTED_LIMIT} more characters left out]"
