"""One engine per GPU (COMFYBENTO_GPUS): which engines run (runtime/devices.py), how they are pinned (engine/service.py),
and how the front spreads requests across them (engine/pool.py `pick`)."""

from __future__ import annotations

import pytest

from comfybento.config import Settings
from comfybento.engine.pool import EngineLoad, pick
from comfybento.engine.service import make_engine_services
from comfybento.errors import ConfigError
from comfybento.runtime.devices import engine_devices, visible_gpus
from comfybento.workflows.project import Project


def _settings(gpus: str = "") -> Settings:
    return Settings.from_env({"COMFYBENTO_GPUS": gpus} if gpus else {})


def test_the_fewest_in_flight_wins_then_the_one_picked_longest_ago():
    loads = [EngineLoad(in_flight=3, picked_at=1.0), EngineLoad(in_flight=1, picked_at=5.0), EngineLoad(in_flight=1, picked_at=2.0)]
    assert pick(loads, now=10.0) == 2  # 1 in flight on both 1 and 2; 2 was picked longer ago
    loads[2].in_flight = 4
    assert pick(loads, now=10.0) == 1
    assert pick([EngineLoad(), EngineLoad()], now=0.0) == 0


def _send(loads: list[EngineLoad], now: float) -> int:
    index = pick(loads, now)
    assert index is not None
    loads[index].in_flight += 1
    loads[index].picked_at = now
    return index


def test_spreading_by_queue_depth_keeps_every_engine_busy_not_round_robin():
    """Engines that finish at different speeds: the one that drained its queue gets the next requests."""
    loads = [EngineLoad(), EngineLoad()]
    assert [_send(loads, float(t)) for t in range(4)] == [0, 1, 0, 1]  # even when both are idle
    loads[0].in_flight = 0  # engine 0 finished its two, engine 1 still runs its two
    # engine 0 catches up, then a tie goes to the one picked longest ago; round-robin would have sent 0, 1, 0
    assert [_send(loads, float(t)) for t in range(4, 7)] == [0, 0, 1]
    assert [load.in_flight for load in loads] == [2, 3]


def test_an_engine_set_aside_is_passed_over_until_every_one_is():
    loads = [EngineLoad(in_flight=0, down_until=20.0), EngineLoad(in_flight=5)]
    assert pick(loads, now=10.0) == 1  # engine 0 failed a request less than DOWN_S ago
    assert pick(loads, now=21.0) == 0  # and is back once that is over
    loads[1].down_until = 20.0
    assert pick(loads, now=10.0) == 0  # every engine set aside: the fewest in flight among all


def test_a_request_is_moved_once_per_engine():
    loads = [EngineLoad(), EngineLoad(in_flight=2)]
    assert pick(loads, now=0.0, exclude=frozenset({0})) == 1
    assert pick(loads, now=0.0, exclude=frozenset({0, 1})) is None


@pytest.mark.parametrize(("gpus", "visible", "expected"), [
    ("", ["0", "1", "2"], ["0", "1", "2"]),  # every visible GPU
    ("all", ["0", "1"], ["0", "1"]),
    ("2", ["0", "1", "2", "3"], ["0", "1"]),  # the first two
    ("1,3", ["0", "1", "2", "3"], ["1", "3"]),  # those devices
    ("3,", ["0", "1", "2", "3"], ["3"]),  # the device 3 alone (a bare 3 is a count)
    ("", ["4", "6"], ["4", "6"]),  # CUDA_VISIBLE_DEVICES=4,6 set for the server: its own names
])
def test_which_engines_run_on_a_gpu_host(gpus, visible, expected):
    assert engine_devices(_settings(gpus), visible=visible, on_cpu=False) == expected


def test_on_a_cpu_engine_the_count_is_how_many_cpu_engines_run():
    assert engine_devices(_settings(), on_cpu=True) == [None]
    assert engine_devices(_settings("2"), on_cpu=True) == [None, None]
    assert engine_devices(_settings("0,1,2"), on_cpu=True) == [None, None, None]


@pytest.mark.parametrize(("gpus", "message"), [
    ("4", r"COMFYBENTO_GPUS=4: only 2 GPU\(s\) are visible \(0, 1\)"),
    ("0,5", r"device\(s\) 5 not visible here \(visible: 0, 1"),
])
def test_asking_for_gpus_that_are_not_there_fails_startup_naming_them(gpus, message):
    with pytest.raises(ConfigError, match=message):
        engine_devices(_settings(gpus), visible=["0", "1"], on_cpu=False)


@pytest.mark.parametrize("raw", ["0", "-1", "two", "0,0", "1;2"])
def test_a_malformed_gpus_setting_is_refused_naming_it(raw):
    with pytest.raises(ConfigError, match=r"COMFYBENTO_GPUS="):
        _settings(raw)


def test_visible_gpus_follow_cuda_visible_devices():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 5"}) == ["2", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_each_engine_service_is_pinned_to_its_device_before_its_worker_starts():
    project = Project(settings=_settings(), lock=None, catalog={}, aliases={})  # type: ignore[arg-type]
    one = make_engine_services(project, {"gpu": 1}, ["0"])
    assert [s.name for s in one] == ["comfybento-engine"]  # one engine: the name it always had
    services = make_engine_services(project, {"gpu": 1}, ["3", "5"])
    assert [s.name for s in services] == ["comfybento-engine-0", "comfybento-engine-1"]
    envs = [{e.name: e.value for e in s.envs} for s in services]
    assert [(e["CUDA_VISIBLE_DEVICES"], e["COMFYBENTO_ENGINE_ID"]) for e in envs] == [("3", "0"), ("5", "1")]
    cpu = make_engine_services(project, {}, [None, None])
    assert all("CUDA_VISIBLE_DEVICES" not in {e.name for e in s.envs} for s in cpu)
