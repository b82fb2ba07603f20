"""Publisher._skip: numbers lost upstream of a relay reach subscribers as Overrun(missed=n)."""

from __future__ import annotations

import pytest

import shmkit
from shmkit.broadcast import Broadcast
from shmkit.errors import Overrun


def test_skip_inside_the_ring_is_one_overrun_with_the_exact_count(name: str) -> None:
    with Broadcast.create(name, 16, 8) as bc:
        try:
            with bc.publisher() as pub, bc.subscribe("oldest") as sub:
                for i in range(3):
                    pub.publish(b"m%d" % i)
                assert pub._skip(2) == 5
                pub.publish(b"m5")
                assert [sub.recv(timeout=1.0) for _ in range(3)] == [b"m0", b"m1", b"m2"]
                with pytest.raises(Overrun) as info:
                    sub.recv(timeout=1.0)
                assert info.value.missed == 2
                assert sub.recv(timeout=1.0) == b"m5"
                assert sub.next_seq == 6
                assert sub.missed == 2 and sub.overruns == 1
        finally:
            bc.unlink()


def test_skip_past_a_whole_lap_counts_the_overwritten_and_the_skipped(name: str) -> None:
    with Broadcast.create(name, 16, 4) as bc:
        try:
            with bc.publisher() as pub, bc.subscribe("oldest") as sub:
                pub.publish(b"a")
                pub.publish(b"b")
                assert sub.recv(timeout=1.0) == b"a"
                pub._skip(10)  # numbers 2..11; their markers overwrite b's slot too
                pub.publish(b"c")  # number 12
                with pytest.raises(Overrun) as info:
                    sub.recv(timeout=1.0)
                assert info.value.missed == 11  # b (overwritten) and the 10 skipped
                assert sub.recv(timeout=1.0) == b"c"
                assert sub.next_seq == 13
        finally:
            bc.unlink()


def test_a_late_subscriber_from_oldest_steps_over_skipped_numbers(name: str) -> None:
    with Broadcast.create(name, 16, 8) as bc:
        try:
            with bc.publisher() as pub:
                pub._skip(3)
                pub.publish(b"x")
                with bc.subscribe(0) as sub:
                    with pytest.raises(Overrun) as info:
                        sub.recv(timeout=1.0)
                    assert info.value.missed == 3
                    assert sub.recv(timeout=1.0) == b"x"
        finally:
            bc.unlink()


def test_a_held_view_of_a_slot_a_skip_reuses_is_invalidated(name: str) -> None:
    with Broadcast.create(name, 16, 2) as bc:
        try:
            with bc.publisher() as pub, bc.subscribe("oldest") as sub:
                pub.publish(b"v")
                msg = sub.recv_view(timeout=1.0)
                pub._skip(2)  # marks both slots: the held message is gone
                with pytest.raises(Overrun):
                    msg.validate()
                msg.release()
        finally:
            bc.unlink()


def test_skip_zero_is_a_no_op_and_backpressure_refuses(name: str) -> None:
    with Broadcast.create(name, 16, 4, backpressure=True) as bc:
        try:
            with bc.publisher() as pub, pytest.raises(ValueError):
                pub._skip(1)
        finally:
            bc.unlink()
    with shmkit.publisher(name + "l", 16, 4) as pub:
        try:
            assert pub._skip(0) == 0
            assert pub.published == 0
        finally:
            pub.unlink()
