"""Twitter text: whether a text has a link, and how long Twitter counts it.

A tweet may weigh at most 280 by Twitter's own rules, not 280 characters: every link counts 23 whatever
its length, an emoji counts 2 however many code points it takes, CJK and most non-Latin characters count 2.
`tweet_length` ports those rules (twitter-text v3) so that a post is cut to really fit, and `has_link`
finds what Twitter would link, for posting modes that must not post links.

Only the standard library is used here: the one port of Twitter's counting rules on PyPI
(twitter-text-parser 3.0.0) imports `pkg_resources`, which current setuptools no longer ships, and its emoji
table stops at Unicode 12.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

TWEET_LIMIT = 280


# Country-code top-level domains as twitter-text lists them (ASCII ones).
_CCTLDS = frozenset("""
ac ad ae af ag ai al am an ao aq ar as at au aw ax az ba bb bd be bf bg bh bi bj bl bm bn bo bq br bs bt bv bw by
bz ca cc cd cf cg ch ci ck cl cm cn co cr cu cv cw cx cy cz de dj dk dm do dz ec ee eg eh er es et eu fi fj fk fm
fo fr ga gb gd ge gf gg gh gi gl gm gn gp gq gr gs gt gu gw gy hk hm hn hr ht hu id ie il im in io iq ir is it je
jm jo jp ke kg kh ki km kn kp kr kw ky kz la lb lc li lk lr ls lt lu lv ly ma mc md me mf mg mh mk ml mm mn mo mp
mq mr ms mt mu mv mw mx my mz na nc ne nf ng ni nl no np nr nu nz om pa pe pf pg ph pk pl pm pn pr ps pt pw py qa
re ro rs ru rw sa sb sc sd se sg sh si sj sk sl sm sn so sr ss st su sv sx sy sz tc td tf tg th tj tk tl tm tn to
tp tr tt tv tz ua ug uk um us uy uz va vc ve vg vi vn vu wf ws ye yt za zm zw
""".split())
# Generic top-level domains common in chat. Twitter knows ~1,500; a bare "name.tld" with a longer ending that
# is not listed here is counted as max(23, its length) by `tweet_length`, which is right either way.
_GTLDS = frozenset("""
com net org edu gov mil int info biz name pro mobi app dev xyz online site store shop blog tech club live news
link page cloud art fun top wiki social email video game games chat zone world life today space website one
media network digital design studio agency porn sex xxx lol wtf ninja rocks tube gay travel music
""".split())

# Characters of a URL's path and query as twitter-text allows them (ASCII, Latin accents, Cyrillic): a link
# ends at the first other one, e.g. at Japanese text right after "example.com/".
_URL_TAIL = r"[a-z0-9!?*'();:=+,.$/%#\[\]\-\u2013_~@|&\u00c0-\u024f\u0400-\u04ff]"
# ...and the characters it may end with; others at its end (".", ",", "!", ...) are the sentence's.
_URL_END = re.compile(r"[a-z0-9+\-=_#/&\u00c0-\u024f\u0400-\u04ff]", re.IGNORECASE)
_LABEL = r"[a-z0-9\u00c0-\u024f](?:[a-z0-9_\u00c0-\u024f-]{0,61}[a-z0-9\u00c0-\u024f])?"
_URL = re.compile(
    # With a scheme; the host may be any letters (internationalised domains).
    r"(?<![a-z0-9@$#＠＃])(?P<scheme>https?://)(?P<host>[^\W_](?:[\w.-]*[^\W_])?)"
    # A bare domain, not part of an e-mail address, a path or a longer word.
    rf"|(?<![a-z0-9@$#＠＃./_-])(?P<domain>(?:{_LABEL}\.)+(?P<tld>[a-z]{{2,63}}))(?![a-z0-9-])"
    rf"(?P<rest>(?::\d{{1,5}})?(?:[/?#]{_URL_TAIL}*)?)",
    re.IGNORECASE,
)
_SCHEME_REST = re.compile(rf"(?::\d{{1,5}})?(?:[/?#]{_URL_TAIL}*)?", re.IGNORECASE)


def _trim_url(url: str, keep: int) -> str:
    """`url` without the trailing characters a link may not end with (down to `keep` characters); a closing
    parenthesis stays when the link opened one, as in Wikipedia links."""
    while len(url) > keep:
        last = url[-1]
        if _URL_END.match(last) or (last == ")" and url.count("(") >= url.count(")")):
            break
        url = url[:-1]
    return url


def _urls(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, kind) of every URL-like span: kind "link" (Twitter links it) or "maybe" (it may: a bare
    domain whose ending is not in `_GTLDS`, or a scheme with a host that has no dot)."""
    pos = 0
    while (match := _URL.search(text, pos)) is not None:
        start = match.start()
        if match["scheme"]:
            head = match.end()
            rest = _SCHEME_REST.match(text, head)
            end = start + len(_trim_url(text[start:rest.end()], head - start))
            kind = "link" if "." in match["host"] else "maybe"
        else:
            head = start + len(match["domain"])
            end = start + len(_trim_url(match[0], head - start))
            tld = match["tld"].lower()
            if tld in _CCTLDS or tld in _GTLDS:
                kind = "link"
            elif len(tld) > 2:
                kind = "maybe"
            else:  # a two-letter ending that is no country code ("node.js") is just text
                kind = ""
        if kind:
            yield start, end, kind
        pos = max(end, start + 1)


_WWW = re.compile(r"(?<![\w.])www\.[^\s.]+\.\S", re.IGNORECASE)


def has_link(text: str) -> bool:
    """Whether `text` contains a link: http(s)://..., www.name.tld, or a bare domain that Twitter would link
    ("example.com/abc", "discord.gg/x"). Like Twitter, this counts any name ending in a country code, so a
    file name such as "notes.md" (Moldova) or a missing space as in "yeah.so" (Somalia) are links too."""
    if _WWW.search(text):
        return True
    return any(kind == "link" for _, _, kind in _urls(text))


# twitter-text v3: weight 100 (one character) for these code points, 200 (two) for all others; scale 100.
_LIGHT = re.compile("[\u0000-\u10ff\u2000-\u200d\u2010-\u201f\u2032-\u2037]")
# Emoji count two each however many code points they take: a pictograph with its variation selector or skin
# tone, further pictographs joined by ZWJ, a flag (two regional indicators), a keycap, a subdivision flag.
# Pictographs below U+1F000 mostly default to text and take U+FE0F ("❤️"); above, only some do, so there
# a selector merges only inside a ZWJ sequence ("🏳️‍🌈"). In doubt a sequence counts as several emoji: that
# can make a text look longer than Twitter counts it, never shorter.
_PICTO_LOW = ("\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u21aa\u231a-\u23ff\u24c2\u25aa-\u25fe\u2600-\u27bf"
              "\u2934\u2935\u2b05-\u2b55\u3030\u303d\u3297\u3299")
_PICTO_HIGH = "\U0001F000-\U0001F1E5\U0001F200-\U0001FAFF"  # not the regional indicators (flags)
_SKIN = "[\U0001F3FB-\U0001F3FF]?"
_FIRST = f"(?:[{_PICTO_LOW}][\ufe0e\ufe0f]?|[{_PICTO_HIGH}](?:[\ufe0e\ufe0f](?=\u200d))?){_SKIN}"
_NEXT = f"[{_PICTO_LOW}{_PICTO_HIGH}][\ufe0e\ufe0f]?{_SKIN}"
_EMOJI = re.compile(
    "[\U0001F1E6-\U0001F1FF]{2}"
    "|[0-9#*]\ufe0f?\u20e3"
    "|\U0001F3F4[\U000E0020-\U000E007E]+\U000E007F"
    f"|{_FIRST}(?:\u200d{_NEXT})*"
)
_URL_WEIGHT = 23


def _plain_weight(text: str) -> int:
    """Weighted length of text without URLs: emoji 2, light code points 1, others 2."""
    total = 0
    pos = 0
    for match in _EMOJI.finditer(text):
        chunk = text[pos:match.start()]
        total += 2 * len(chunk) - len(_LIGHT.findall(chunk)) + 2
        pos = match.end()
    chunk = text[pos:]
    return total + 2 * len(chunk) - len(_LIGHT.findall(chunk))


def tweet_length(text: str) -> int:
    """Twitter's weighted length of `text` (twitter-text v3 rules): NFC-normalised; every link counts 23;
    every emoji, however many code points, counts 2; CJK and most other non-Latin characters count 2; Latin,
    general punctuation and the like count 1. A tweet may weigh at most `TWEET_LIMIT`."""
    text = unicodedata.normalize("NFC", text)
    total = 0
    pos = 0
    for start, end, kind in _urls(text):
        total += _plain_weight(text[pos:start])
        own = _plain_weight(text[start:end])
        # "maybe": Twitter may know the ending (23) or not (its own length); the larger is safe for a limit.
        total += _URL_WEIGHT if kind == "link" else max(_URL_WEIGHT, own)
        pos = end
    return total + _plain_weight(text[pos:])
