"""The file channel between torchrun ranks (no torch needed): followers never act on what an earlier,
crashed launch with the same id left behind, and nobody waits forever."""

from __future__ import annotations

import pickle
import threading

from orchestrator.executors.task import TaskResult
from orchestrator.executors.torchrun import Channel


def _leftover(path) -> None:
    """What a crashed launch leaves: its session, a follower's hello and a first task."""
    old = Channel(path, 0, 2)
    old.open()
    old._nonces = {1: "someone-else"}
    old._write("hello-1", {"token": old.token, "nonce": "someone-else"})
    old.publish(0, {"kind": "task", "node_id": 7, "payload": b"stale"})


def _publish_done(leader: Channel, after: threading.Event | None = None) -> threading.Thread:
    """Rank 0 in a thread: open its session once `after` is set (at once without it), then publish
    "done" (which waits for the follower's hello)."""

    def go():
        if after is not None:
            assert after.wait(30), "the follower never polled for message 0"
        if not leader.token:
            leader.open()
        leader.publish(0, {"kind": "done", "code": 0})

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def test_a_follower_never_takes_a_leftover_message_for_a_new_one(tmp_path):
    path = tmp_path / "tmp" / "torchrun-x"
    _leftover(path)
    follower = Channel(path, 1, 2)
    follower.join()  # reads the leftover session: indistinguishable until rank 0 replaces it
    assert follower.next(0, timeout=0.3) is None  # the leftover task is not addressed to this follower
    # rank 0 replaces the leftover session while the follower is polling for message 0
    polling = threading.Event()
    follow_session = follower._follow_session

    def spy():
        polling.set()
        return follow_session()

    follower._follow_session = spy
    leader = Channel(path, 0, 2)
    publisher = _publish_done(leader, after=polling)
    message = follower.next(0, timeout=30)
    assert polling.is_set()
    assert message is not None and message["kind"] == "done" and follower.token == leader.token
    publisher.join(30)
    assert not publisher.is_alive()


def test_a_follower_that_starts_after_rank_0_joins_its_session(tmp_path):
    path = tmp_path / "tmp" / "torchrun-y"
    leader = Channel(path, 0, 2)
    leader.open()  # rank 0's session exists before the follower starts
    publisher = _publish_done(leader)
    follower = Channel(path, 1, 2)
    follower.join()
    assert follower.token == leader.token
    message = follower.next(0, timeout=30)
    assert message is not None and message["kind"] == "done"
    publisher.join(30)
    assert not publisher.is_alive()


def test_rank_0_does_not_wait_forever_for_a_follower_that_never_comes(tmp_path):
    """A hang here is caught by pytest-timeout: what is asserted is what rank 0 does instead."""
    leader = Channel(tmp_path / "tmp" / "torchrun-z", 0, 3)
    leader.open()
    leader.publish(0, {"kind": "done", "code": 1}, hello_timeout=0.3)
    # published all the same, addressed to nobody (no follower said hello)
    assert leader._read("msg-000000") == {"token": leader.token, "nonces": {}, "kind": "done", "code": 1}
    assert leader.results(0, timeout=0.2) == {}


def test_results_and_goodbyes(tmp_path):
    path = tmp_path / "tmp" / "torchrun-w"
    leader = Channel(path, 0, 3)
    leader.open()
    followers = [Channel(path, r, 3) for r in (1, 2)]
    for f in followers:
        f.join()
    leader.publish(0, {"kind": "task", "node_id": 3, "payload": b""})
    for f in followers:
        assert f.next(0, timeout=5)["node_id"] == 3
        f.answer(0, pickle.dumps(TaskResult(3, "ran")), at=123.0)
    got = leader.results(0, timeout=5)
    assert sorted(got) == [1, 2] and all(r.status == "ran" and at == 123.0 for r, at in got.values())
    for f in followers:
        f.bye()
    leader.close(timeout=5)
    assert not path.exists()
