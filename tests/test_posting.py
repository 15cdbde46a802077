"""Persona posts: the line picker on a real tiny persona, and the Twitter target against a simulated API
(`responses`): request body and OAuth header, 429, 5xx, duplicate and credential errors."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import responses

from bot.inference.engine import Engine
from bot.core.filters import TWITTER, Blocklist
from bot.inference.persona import Persona
from bot.jobs.posting import DuplicateContent, PostError, TargetDisabled, pick_line
from bot.jobs.twitter import TwitterTarget

TWEETS = "https://api.twitter.com/2/tweets"
DUPLICATE = {"detail": "You are not allowed to create a Tweet with duplicate content.", "status": 403,
             "title": "Forbidden", "type": "about:blank"}


def twitter(sleeps: list[float] | None = None) -> TwitterTarget:
    record = sleeps.append if sleeps is not None else (lambda s: None)
    return TwitterTarget("ck", "cs", "at", "ats", backoff_s=0.5, sleep=record)


def created(tweet_id: str = "1790000000000000001") -> dict:
    return {"json": {"data": {"id": tweet_id, "text": "x", "edit_history_tweet_ids": [tweet_id]}}, "status": 201}


@responses.activate
def test_a_tweet_is_posted_with_the_text_and_an_oauth1_user_header():
    responses.add(responses.POST, TWEETS, **created("42"))
    assert twitter().post("hello from the persona") == "42"
    request = responses.calls[0].request
    assert json.loads(request.body) == {"text": "hello from the persona"}
    auth = request.headers["Authorization"]
    assert auth.startswith("OAuth ")
    for part in ('oauth_consumer_key="ck"', 'oauth_token="at"', 'oauth_signature_method="HMAC-SHA1"',
                 'oauth_version="1.0"', "oauth_signature=", "oauth_nonce=", "oauth_timestamp="):
        assert part in auth
    assert "cs" not in auth.split("oauth_signature=")[0] and "ats" not in auth   # secrets only sign


@responses.activate
def test_429_waits_for_the_reset_then_posts():
    reset = int(time.time()) + 5
    responses.add(responses.POST, TWEETS, status=429, json={"title": "Too Many Requests"},
                  headers={"x-rate-limit-reset": str(reset)})
    responses.add(responses.POST, TWEETS, **created("7"))
    sleeps: list[float] = []
    assert twitter(sleeps).post("patience") == "7"
    assert len(responses.calls) == 2 and len(sleeps) == 1 and 4 <= sleeps[0] <= 7


@responses.activate
def test_a_rate_limit_longer_than_the_bound_skips_instead_of_waiting():
    responses.add(responses.POST, TWEETS, status=429, json={}, headers={"x-rate-limit-reset": str(int(time.time()) + 7200)})
    sleeps: list[float] = []
    with pytest.raises(PostError, match="rate limited"):
        twitter(sleeps).post("later")
    assert sleeps == [] and len(responses.calls) == 1


@responses.activate
def test_503_is_retried_with_backoff_then_posts():
    responses.add(responses.POST, TWEETS, status=503, json={"title": "Service Unavailable"})
    responses.add(responses.POST, TWEETS, status=503, json={"title": "Service Unavailable"})
    responses.add(responses.POST, TWEETS, **created("9"))
    sleeps: list[float] = []
    assert twitter(sleeps).post("third time lucky") == "9"
    assert sleeps == [0.5, 1.0]


@responses.activate
def test_a_duplicate_is_its_own_error_and_credentials_errors_disable_the_target():
    responses.add(responses.POST, TWEETS, status=403, json=DUPLICATE)
    with pytest.raises(DuplicateContent):
        twitter().post("same again")
    responses.replace(responses.POST, TWEETS, status=401, json={"title": "Unauthorized", "status": 401})
    target = twitter()
    with pytest.raises(TargetDisabled, match="401"):
        target.post("hi")
    assert target.disabled and "TWITTER_" in target.disabled
    calls = len(responses.calls)
    with pytest.raises(TargetDisabled):
        target.post("hi again")
    assert len(responses.calls) == calls                                     # no further requests


@pytest.mark.slow
def test_a_line_that_fails_a_filter_is_never_posted(bob_artifact):
    persona = Persona.load(bob_artifact, blocklist=Blocklist([r"re:\w"]))   # refuses every line

    async def main():
        async with Engine(persona) as engine:
            return await pick_line(engine, TWITTER, seed=1)

    choice = asyncio.run(main())
    assert choice.text is None and len(choice.rejected) == 18
    # That nothing is then tweeted is asserted where lines are tweeted, the scheduler (tests/test_scheduler.py).


@pytest.mark.slow
def test_picked_lines_have_no_links_mentions_or_repeats(alice_artifact):
    # Alice opens every line with @everyone: none of her lines may be posted, even with the leak guard off
    # (which would refuse them first: they are her training lines).
    from bot.core.filters import OutputFilter

    persona = Persona.load(alice_artifact)
    persona.output_filter = OutputFilter()

    async def main():
        async with Engine(persona) as engine:
            return await pick_line(engine, TWITTER, seed=4, rounds=1)

    choice = asyncio.run(main())
    assert choice.text is None
    assert choice.rejected.count("contains a mention") >= 5


def test_post_checks_refuse_links_mentions_overlong_lines_and_repeats():
    from bot.jobs.posting import _post_problem

    recent = {"the moon is a cheese"}
    assert _post_problem("see example.com/x tonight", TWITTER, recent) == "contains a link"
    assert _post_problem("hey @\u200beveryone", TWITTER, recent) == "contains a mention"
    assert _post_problem("ok " * 120, TWITTER, recent).startswith("too long for twitter")
    assert _post_problem("The moon  is a CHEESE", TWITTER, recent) == "repeats a recent post"
    assert _post_problem("a perfectly fine line", TWITTER, recent) is None
