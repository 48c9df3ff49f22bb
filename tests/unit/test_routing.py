"""The prefix-aware router: hits, load threshold, power-of-two fallback, LRU bound, removal of gone replicas."""

import random

import pytest
from pydantic import ValidationError

from autoscale.routing import PrefixRouter, RouterConfig, prefix_blocks

CFG = RouterConfig(block_tokens=4, block_chars=8, max_blocks=1000, imbalance_threshold=3)
SYSTEM = list(range(100, 116))  # a shared 16-token system prompt = 4 blocks


def router(cfg=CFG, seed=0):
    return PrefixRouter(cfg, random.Random(seed))


def test_blocks_are_chained_and_only_complete():
    a = prefix_blocks([1, 2, 3, 4, 5, 6, 7, 8, 9], CFG)
    b = prefix_blocks([9, 9, 9, 9, 5, 6, 7, 8], CFG)
    assert len(a) == 2 and len(b) == 2
    assert a[1] != b[1]  # same second block, different first: different prefix
    assert prefix_blocks("abcdefgh" * 2 + "xyz", CFG) == prefix_blocks("abcdefgh" * 2 + "123", CFG)
    assert prefix_blocks([1, 2, 3], CFG) == []


def test_same_prefix_goes_back_to_the_same_replica():
    r = router()
    first = r.choose(SYSTEM + [1, 2, 3, 4], {"a": 0, "b": 0, "c": 0})
    again = r.choose(SYSTEM + [9, 9, 9, 9], {"a": 1, "b": 0, "c": 0} if first.replica == "a" else
                     {**{k: 0 for k in "abc"}, first.replica: 1})
    assert again.replica == first.replica and again.matched_blocks == 4 and "prefix hit" in again.reason


def test_longest_match_wins():
    r = router()
    r.choose(SYSTEM[:8], {"a": 0})  # "a" holds 2 blocks
    r.choose(SYSTEM, {"b": 0})  # "b" then holds all 4 (and takes over blocks 1-2)
    route = r.choose(SYSTEM + [7, 7, 7, 7], {"a": 0, "b": 0})
    assert route.replica == "b" and route.matched_blocks == 4


def test_overloaded_owner_loses_to_the_least_loaded():
    r = router()
    r.choose(SYSTEM, {"a": 0})
    at_limit = r.choose(SYSTEM, {"a": 3, "b": 0})
    assert at_limit.replica == "a"  # 3 more queued = threshold: still the cache
    over = r.choose(SYSTEM, {"a": 4, "b": 0})
    assert over.replica == "b" and over.matched_blocks == 0 and "overloaded" in over.reason


def test_no_prefix_falls_back_to_power_of_two_choices():
    r = router(seed=3)
    picks = [r.choose([i] * 3, {"a": 0, "b": 5, "c": 9, "d": 2}).replica for i in range(400)]
    assert "c" not in picks  # the busiest never wins a pair
    assert picks.count("a") > picks.count("d") > picks.count("b") > 0


def test_owner_that_is_not_a_candidate_is_ignored():
    r = router()
    r.choose(SYSTEM, {"a": 0})
    route = r.choose(SYSTEM, {"b": 2, "c": 1})
    assert route.replica in ("b", "c") and route.matched_blocks == 0


def test_memory_is_bounded_lru():
    r = router(RouterConfig(block_tokens=4, max_blocks=10, imbalance_threshold=3))
    r.choose(SYSTEM, {"a": 0})  # 4 blocks
    for i in range(5):
        r.choose([1000 + i] * 4, {"b": 0})  # 5 more blocks: 9 in all
    r.choose(SYSTEM, {"a": 0})  # touch the system prompt: most recent again
    for i in range(4):
        r.choose([2000 + i] * 4, {"b": 0})
    assert len(r) == 10
    assert r.choose(SYSTEM, {"a": 5, "b": 5}).replica == "a"  # survived: recently used
    assert r.choose([1000] * 4, {"a": 0, "b": 0}).matched_blocks == 0  # the oldest was evicted


def test_forget_replica_removes_its_blocks():
    r = router()
    r.choose(SYSTEM, {"a": 0})
    r.choose([5] * 8, {"b": 0})
    assert r.forget_replica("a") == 4 and len(r) == 2
    assert r.forget_replica("a") == 0
    assert r.choose(SYSTEM, {"a": 0, "b": 0}).matched_blocks == 0


def test_text_prompts_route_by_prefix():
    r = router()
    sys_prompt = "You are a helpful assistant. " * 3
    first = r.choose(sys_prompt + "hi", {"a": 0, "b": 0})
    assert r.choose(sys_prompt + "bye", {"a": 1, "b": 1}).replica == first.replica


def test_no_candidates_is_an_error_and_config_is_checked():
    with pytest.raises(ValueError, match="no candidate"):
        router().choose(SYSTEM, {})
    with pytest.raises(ValidationError, match="block_tokens"):
        RouterConfig(block_tokens=0)
    with pytest.raises(ValidationError, match="bogus"):
        RouterConfig(bogus=1)


def test_record_moves_a_prefix_to_where_the_request_really_went():
    r = PrefixRouter(RouterConfig(block_chars=4))
    prompt = "abcdefghijklmnop"
    first = r.choose(prompt, {"a": 0, "b": 0})
    other = "b" if first.replica == "a" else "a"
    r.record(prompt, other)  # Serve sent it elsewhere
    again = r.choose(prompt, {"a": 0, "b": 0})
    assert again.replica == other and again.matched_blocks == 4
