"""Strip credentials from camera URLs before they reach logs, errors, the API or metrics."""
from __future__ import annotations

import re

# scheme://user:pass@host, scheme://user@host, and the malformed scheme:/user:pass@host. Greedy up to the
# last "@" before the path, so a password holding a raw "@" is hidden whole.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*:/{1,3})(?P<userinfo>[^/\s]*)@")


def redact_url(text: str) -> str:
    """Replace the user:password part of every URL in `text` with `***`."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", str(text))
