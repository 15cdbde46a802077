"""Unicode details shared by the leak guard and the blocklist.

Both compare what a reply says, not how it is spelt: an invisible character inside a word (a zero-width space,
a soft hyphen) must not hide a training line from the guard nor a blocked word from the list, so both remove
these first. Defined once here so that the two checks cannot drift apart on what counts as invisible.
"""

from __future__ import annotations

import re

# Invisible characters that can sit inside a word without changing how it reads.
FORMAT_CHARS = re.compile(r"[\u00ad\u200b-\u200f\u2060-\u2064\ufeff]")
